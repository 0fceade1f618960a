"""`TIDAreasHook`: draws the areas TID kept (`TID.record`) into TensorBoard ("tid/areas"); the entry
points register it through `visualization_hooks` (the training core never imports matplotlib)."""
from typing import List, Sequence

from detectron2.engine import HookBase
from detectron2.utils import comm

from ..distill.tid import TID
from ..engine.hooks import unwrap
from .tid_areas import tid_area_sheet_for_tensorboard

__all__ = ["TIDAreasHook", "visualization_hooks"]


def visualization_hooks(model) -> List[HookBase]:
    """The picture hooks a (possibly DDP-wrapped) model's distillers ask for: on the main process (the
    one that writes events), a `TIDAreasHook` when a TID distiller has MODEL.DISTILL.TID.VIS_PERIOD
    > 0, else none. Registered after the trainer's writer, a sheet reaches TensorBoard at the next
    write."""
    distillers = getattr(unwrap(model), "distillers", {}).values()
    drawn = [d for d in distillers if isinstance(d, TID) and d.vis_period > 0]
    return [TIDAreasHook(drawn)] if drawn and comm.is_main_process() else []


class TIDAreasHook(HookBase):
    """After every step, turns the view each TID distiller kept at that step (its `view`, set every
    MODEL.DISTILL.TID.VIS_PERIOD iterations) into an area sheet in EventStorage, then drops it."""

    def __init__(self, distillers: Sequence):
        self._distillers = list(distillers)

    def after_step(self):
        for distiller in self._distillers:
            view, distiller.view = distiller.view, None
            if view is None:
                continue
            sheet = tid_area_sheet_for_tensorboard(
                view["image"],
                view["areas"],
                index=0,
                input_format=view["input_format"],
                gt_boxes=view["gt_boxes"],
                strides=view["strides"],
                offset=view["offset"],
                score_max=view["score_max"],
                title=f"iter {view['iter']}",
            )
            self.trainer.storage.put_image("tid/areas", sheet)
