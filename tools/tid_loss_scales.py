#!/usr/bin/env python
"""
TID's per-area loss scales on a few training batches of a TeacherStudent config: the detection
losses, each area's share of the locations, and each area's SFDM term in both readings (NORMALIZE
"all": divided by all locations; "area": the mean inside the area, `tid/mean_<area>`), so that a
reading's weights can be set where its loss is of the order of the detection loss.

    python tools/tid_loss_scales.py --config-file configs/quickstart/TID-GFL.yaml --batches 8 \\
        [--weights STUDENT_OR_TRAINING_CHECKPOINT] [KEY VALUE ...]

Prints one JSON object: the means over the batches (no training step is taken).
"""
import argparse
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from tid_d2.checkpoint import load_weights  # noqa: E402
from tid_d2.data import register_shapes  # noqa: E402
from tid_d2.engine import TIDTrainer  # noqa: E402
from tid_d2.engine.defaults import setup_cfg  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="a TeacherStudent config with TID among its methods")
    p.add_argument("--weights", default="", help="student weights (a training or exported checkpoint)")
    p.add_argument("--batches", type=int, default=8, help="training batches averaged over")
    p.add_argument("--shapes-seed", type=int,
                   help="train on the tid_shapes variant of this dataset seed (e.g. 1: the benchmark's tuning "
                        "split) instead of the config's DATASETS.TRAIN")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def measure(cfg, weights: str, batches: int) -> dict:
    """Means over `batches` training batches of the losses and TID's per-area diagnostics."""
    model = build_model(cfg)
    if "tid" not in getattr(model, "distillers", {}):
        raise ValueError(f"{cfg.MODEL.META_ARCHITECTURE} config without TID: set MODEL.DISTILL.METHODS ['TID']")
    if weights:
        load_weights(model.student, weights, key="--weights")
    model.train()
    sums, tid = defaultdict(float), model.distillers["tid"]
    loader = iter(TIDTrainer.build_train_loader(cfg))
    with EventStorage(0), torch.no_grad():
        for _ in range(batches):
            losses = model(next(loader))
            values = {k: float(v) for k, v in losses.items()}
            values.update({k: float(v) for k, v in tid.diagnostics.items() if "/p" not in k})
            for k, v in values.items():
                sums[k] += v / batches
    distilled = tuple(f"loss_{name}" for name in model.distillers)
    detection = sum(v for k, v in sums.items() if k.startswith("loss_") and not k.startswith(distilled))
    return {"detection_loss": detection, **dict(sorted(sums.items()))}


def main(argv=None) -> dict:
    args = parse_args(argv)
    opts = list(args.opts)
    if args.shapes_seed is not None:
        name = f"tid_shapes_s{args.shapes_seed}_train"
        if name not in DatasetCatalog:
            register_shapes(name, "train", seed=args.shapes_seed)
        opts += ["DATASETS.TRAIN", f"('{name}',)"]
    cfg = setup_cfg(args.config_file, opts)
    out = measure(cfg, args.weights, args.batches)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
