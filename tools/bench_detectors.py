#!/usr/bin/env python
"""
Training-step time of GFL and ATSS next to Detectron2's FCOS at the same size, measured in one run
(interleaved rounds, median), as ratios to FCOS.

    python tools/bench_detectors.py [--config configs/quickstart/GFL-student.yaml] [--images 8]
        [--rounds 10] [--device cpu|cuda] [--opts KEY VALUE ...]
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.utils.events import EventStorage  # noqa: E402

from tid_d2.benchmark.cost import _Bench, fixed_batch  # noqa: E402
from tid_d2.engine.defaults import setup_cfg  # noqa: E402

ARCHS = ("FCOS", "GFL", "ATSS")


def arch_cfg(config, arch, device, opts):
    """The same backbone, head width and data for every architecture."""
    cfg = setup_cfg(config, list(opts), freeze=False)
    head = getattr(cfg.MODEL, cfg.MODEL.META_ARCHITECTURE)
    node = getattr(cfg.MODEL, arch)
    node.NUM_CLASSES, node.NUM_CONVS = head.NUM_CLASSES, head.NUM_CONVS
    cfg.MODEL.META_ARCHITECTURE = arch
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart/GFL-student.yaml")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    cfgs = {a: arch_cfg(args.config, a, args.device, args.opts) for a in ARCHS}
    batch = fixed_batch(cfgs["FCOS"], args.images, device=args.device)
    benches = {a: _Bench(cfgs[a], batch) for a in ARCHS}
    with EventStorage(0):  # FCOS logs into it during training
        for b in benches.values():
            b.warmup(args.warmup)
        for _ in range(args.rounds):
            for b in benches.values():
                b.timed_round()
        times = {a: b.summary()["step_time_s"] for a, b in benches.items()}
    result = {a: {"step_time_s": round(t, 4), "ratio_to_fcos": round(t / times["FCOS"], 3)}
              for a, t in times.items()}
    print(json.dumps({"config": args.config, "images": args.images, "device": args.device,
                      "results": result}, indent=2))
    return result


if __name__ == "__main__":
    main()
