#!/usr/bin/env python
"""
Trace a (short) training run iteration by iteration: every loss, the learning rate and, before
the optimizer step (before clipping), the gradient norm of the whole model, of its parts
(backbone, FPN, head, distiller adapters) and the largest of one parameter (what
SOLVER.CLIP_GRADIENTS CLIP_TYPE "norm" clips); with --per-loss also the gradient norm each loss
alone puts on the trainable parameters (one extra backward pass per loss: slow, for diagnosis
only). A run stopped by a non-finite loss or box ends the trace with that iteration.

    python tools/trace_gradients.py --config-file configs/quickstart/TID-GFL.yaml --per-loss \\
        --stop-at 40 --output trace.jsonl SOLVER.IMS_PER_BATCH 4 SEED 5 DATASETS.TEST '()' \\
        MODEL.DISTILL.METHODS '["FITNET"]' MODEL.TEACHER.WEIGHTS teacher20/model_final.pth

Prints one line per iteration and writes one json object per iteration to --output.
"""
import argparse
import json
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.engine import HookBase  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402

from tid_d2.engine import TIDTrainer  # noqa: E402
from tid_d2.engine.defaults import setup_cfg  # noqa: E402


def _part(name: str) -> str:
    """The part of the model a parameter belongs to: 'student.backbone.bottom_up' ->
    'student.backbone', 'distillers.fitnet.adapter.weight' -> 'distillers.fitnet'."""
    words = name.split(".")
    if words[0] == "student" and len(words) > 2 and words[1] == "backbone":
        return ".".join(words[:3]) if words[2] == "bottom_up" else "student.backbone.fpn"
    return ".".join(words[:2])


def _norm(grads: List[torch.Tensor]) -> float:
    grads = [g for g in grads if g is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))


class PerLossGradients:
    """Wraps a model's forward: after each training forward, records the gradient norm of each
    loss alone w.r.t. the trainable parameters (autograd.grad, graph retained) in `last`."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.forward = model.forward
        self.last: Dict[str, float] = {}
        model.forward = self

    def __call__(self, batched_inputs):
        losses = self.forward(batched_inputs)
        if not self.model.training:
            return losses
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.last = {}
        for k, v in losses.items():
            if v.requires_grad:
                grads = torch.autograd.grad(v, params, retain_graph=True, allow_unused=True)
                self.last[k] = _norm(list(grads))
        return losses


class GradientTrace(HookBase):
    """Records losses, LR and gradient norms (whole model and per part) of every iteration."""

    def __init__(self, per_loss: PerLossGradients = None):
        self.per_loss = per_loss
        self.records: List[Dict] = []
        self._grads: Dict[str, float] = {}

    def after_backward(self):
        parts = defaultdict(list)
        for name, p in self.trainer.model.named_parameters():
            if p.grad is not None:
                parts[_part(name)].append(p.grad.detach())
        self._grads = {k: _norm(v) for k, v in sorted(parts.items())}
        grads = [g for v in parts.values() for g in v]
        self._grads["total"] = _norm(grads)
        # what SOLVER.CLIP_GRADIENTS CLIP_TYPE "norm" clips: each parameter's own gradient norm
        self._grads["max_per_parameter"] = max(_norm([g]) for g in grads)

    def after_step(self):
        storage = self.trainer.storage
        losses = {k: v.latest() for k, v in storage.histories().items() if k.startswith("loss")}
        rec = {"iter": self.trainer.iter, "lr": storage.history("lr").latest(),
               "total_loss": storage.history("total_loss").latest(), "losses": losses,
               "grad_norm": self._grads}
        if self.per_loss is not None:
            rec["grad_norm_per_loss"] = dict(self.per_loss.last)
        self.records.append(rec)
        per_loss = " ".join(f"{k}={v:.3g}" for k, v in rec.get("grad_norm_per_loss", {}).items())
        print(f"iter {rec['iter']:4d} lr {rec['lr']:.5f} total_loss {rec['total_loss']:.4g} "
              f"grad_norm {self._grads['total']:.4g} (max of one parameter "
              f"{self._grads['max_per_parameter']:.4g}) {per_loss}", flush=True)


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", help="jsonl file of the per-iteration records")
    p.add_argument("--per-loss", action="store_true", help="gradient norm of each loss alone")
    p.add_argument("--stop-at", type=int,
                   help="stop after this many iterations, keeping SOLVER.MAX_ITER's LR schedule")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    cfg = setup_cfg(args.config_file, args.opts)
    seed_all_rng(cfg.SEED)
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    if args.stop_at:
        trainer.max_iter = min(args.stop_at, trainer.max_iter)  # the LR scheduler keeps MAX_ITER
    wrapper = None
    if args.per_loss:
        wrapper = PerLossGradients(trainer.model)
    trace = GradientTrace(wrapper)
    trainer.register_hooks([trace])
    # DefaultTrainer's inner SimpleTrainer calls its own (empty) after_backward, not the hooks'
    trainer._trainer.after_backward = trace.after_backward
    stopped = None
    try:
        trainer.train()
    except FloatingPointError as e:
        stopped = f"{type(e).__name__}: {e}"
        print(f"stopped at iteration {trainer.iter}: {stopped}", flush=True)
    if args.output:
        with open(args.output, "w") as f:
            for rec in trace.records:
                f.write(json.dumps(rec) + "\n")
            f.write(json.dumps({"stopped": stopped, "iter": trainer.iter}) + "\n")
    finite = [r["grad_norm"]["total"] for r in trace.records if math.isfinite(r["grad_norm"]["total"])]
    if finite:
        print(f"max grad norm {max(finite):.4g}; iterations traced {len(trace.records)}")
    return trace.records


if __name__ == "__main__":
    main()
