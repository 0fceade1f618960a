#!/usr/bin/env python
"""
Train or evaluate a GFL/ATSS/FCOS detector, or distill a teacher into a student, with Detectron2.

    python projects/TID/train_net.py --config-file configs/TID-R50.yaml --num-gpus 8
    python projects/TID/train_net.py --config-file configs/quickstart/GFL-teacher.yaml
    python projects/TID/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS model_final.pth

--progress adds a progress bar on stderr (a line every few percent when stderr is no terminal).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from detectron2.engine import default_argument_parser, default_setup, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from tid_d2.engine import TIDTrainer  # noqa: E402
from tid_d2.engine.defaults import build_eval_model, setup_cfg  # noqa: E402
from tid_d2.engine.progress import ProgressHook  # noqa: E402
from tid_d2.visualization import visualization_hooks  # noqa: E402


def main(args):
    cfg = setup_cfg(args.config_file, args.opts)
    default_setup(cfg, args)
    # this project's loggers (the dataset report, resume notes) log like Detectron2's
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tid_d2", abbrev_name="tid")
    if args.eval_only:
        model = build_eval_model(cfg, cfg.MODEL.WEIGHTS)
        return TIDTrainer.test(cfg, model)
    trainer = TIDTrainer(cfg)
    trainer.register_hooks(visualization_hooks(trainer.model))  # MODEL.DISTILL.TID.VIS_PERIOD
    if getattr(args, "progress", False):
        trainer.register_hooks([ProgressHook(os.path.basename(os.path.normpath(cfg.OUTPUT_DIR)))])
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    parser = default_argument_parser()
    parser.add_argument("--progress", action="store_true", help="show a training progress bar")
    args = parser.parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
