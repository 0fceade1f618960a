"""Detectron2's SimpleTrainer and AMPTrainer that stop on a NaN/Inf loss, naming it and the iteration,
may clip the gradient norm of the whole model, and checkpoint the random state the training step draws
from (an exact --resume of detectors that sample, such as the RPN and ROI heads)."""
import math
from typing import Mapping, Optional

import torch

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils.events import get_event_storage

__all__ = [
    "FiniteLossAMPTrainer",
    "FiniteLossSimpleTrainer",
    "build_step_trainer",
    "check_finite_losses",
    "gradient_norm_bound",
]


def check_finite_losses(
    loss_dict: Mapping[str, torch.Tensor], iteration: int
) -> Mapping[str, torch.Tensor]:
    """
    Raise FloatingPointError naming every NaN/Inf loss and the iteration; else return the losses
    as 0-d CPU tensors. One `isfinite` over the stacked losses and one device-to-host copy, which
    Detectron2's metric writer then reuses instead of syncing once per loss.
    """
    values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).cpu()
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = {k: float(v) for k, v, ok in zip(loss_dict, values, finite) if not ok}
        every = {k: round(float(v), 6) for k, v in zip(loss_dict, values)}
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}: {bad}; training stopped before the "
            f"optimizer step. All losses: {every}"
        )
    return dict(zip(loss_dict, values))


class _FiniteLossMixin:
    """Checks the losses of every iteration (before the optimizer step) with `check_finite_losses`;
    a FloatingPointError raised inside the step (e.g. by the GIoU loss) gets the iteration added.
    With `max_grad_norm` set, the gradients of all parameters are scaled after the backward pass so
    that their joint L2 norm is at most that value (`torch.nn.utils.clip_grad_norm_`); the norm
    before clipping is logged as "grad_norm", the number of clipped steps so far as
    "grad_clipped_steps"."""

    max_grad_norm: Optional[float] = None
    clipped_steps: int = 0
    _pending_rng: Optional[dict] = None

    def state_dict(self):
        """Also torch's random state: a detector's training step may draw from it (R-CNN's anchor and
        proposal sampling)."""
        ret = super().state_dict()
        ret["torch_rng"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            ret["cuda_rng"] = torch.cuda.get_rng_state_all()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._pending_rng = {k: state_dict[k] for k in ("torch_rng", "cuda_rng") if k in state_dict}

    def restore_rng(self):
        """Put back the random state of the loaded checkpoint; call it after the consumed batches were
        skipped (the data pipeline's draws replay from the seed). Exact in one process: with DDP, the
        checkpoint holds the main process's state and every process resumes from it."""
        pending, self._pending_rng = self._pending_rng, None
        if not pending:
            return
        torch.set_rng_state(pending["torch_rng"])
        cuda = pending.get("cuda_rng")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)

    def after_backward(self):
        if self.max_grad_norm is not None:
            if isinstance(self, AMPTrainer):
                self.grad_scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm))
            # a non-finite norm (an AMP overflow) is not a clip: the grad scaler skips that step
            self.clipped_steps += math.isfinite(norm) and norm > self.max_grad_norm
            storage = get_event_storage()
            storage.put_scalar("grad_norm", norm)
            storage.put_scalar("grad_clipped_steps", self.clipped_steps, smoothing_hint=False)
        super().after_backward()

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            if "iteration" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration {self.iter})") from e

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        iter = self.iter if iter is None else iter
        super()._write_metrics(check_finite_losses(loss_dict, iter), data_time, prefix, iter)


class FiniteLossSimpleTrainer(_FiniteLossMixin, SimpleTrainer):
    """SimpleTrainer that stops on a NaN/Inf loss, naming it."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """AMPTrainer that stops on a NaN/Inf loss, naming it."""


def gradient_norm_bound(value, key: str) -> Optional[float]:
    """A configured gradient-norm bound as `build_step_trainer` takes it: None for 0 or None (no
    clipping), else the value; a negative one is an error naming the config `key`."""
    if value is not None and value < 0:
        raise ValueError(f"{key} must be >= 0 (0: no clipping), got {value}")
    return float(value) if value else None


def build_step_trainer(
    model, data_loader, optimizer, amp: bool = False, max_grad_norm: Optional[float] = None
) -> SimpleTrainer:
    """
    The trainer that runs one iteration (FiniteLossAMPTrainer with `amp`, else
    FiniteLossSimpleTrainer); `max_grad_norm` (> 0, or None for no clipping) bounds the gradient
    norm of the whole model at every step.
    """
    if max_grad_norm is not None and not max_grad_norm > 0:
        raise ValueError(f"the full-model gradient norm bound must be > 0, got {max_grad_norm}")
    trainer = (FiniteLossAMPTrainer if amp else FiniteLossSimpleTrainer)(model, data_loader, optimizer)
    trainer.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
    return trainer
