#!/usr/bin/env python
"""
Train or evaluate a detector, or distill a teacher into a student, from a LazyConfig
(configs/lazy/*.py), in the manner of Detectron2's tools/lazyconfig_train_net.py; also on the CPU
(`train.device=cpu`, GLOO processes). The engine is the YAML path's (tid_d2.engine).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/gfl_r50_1x.py --num-gpus 8
    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_gfl_r101_r50_1x.py --num-gpus 8
    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/gfl_student.py
    python projects/TID/lazy_train_net.py --config-file CFG --eval-only train.init_checkpoint=X.pth
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from detectron2.config import LazyConfig  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402

import tid_d2  # noqa: E402,F401  (registers models and the tid_shapes datasets)
from tid_d2.engine.defaults import create_ddp_model  # noqa: E402
from tid_d2.engine.lazy import (  # noqa: E402
    build_lazy_eval_model,
    build_lazy_trainer,
    check_config,
    do_test,
    resolve_device,
)
from tid_d2.visualization import visualization_hooks  # noqa: E402


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    check_config(cfg, args.config_file, args.eval_only)
    resolve_device(cfg)
    default_setup(cfg, args)
    if args.eval_only:
        return do_test(cfg, create_ddp_model(build_lazy_eval_model(cfg)))
    trainer, start_iter = build_lazy_trainer(cfg, resume=args.resume)
    trainer.register_hooks(visualization_hooks(trainer.model))  # tid=dict(vis_period=...)
    trainer.train(start_iter, cfg.train.max_iter)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
