#!/usr/bin/env python
"""
Export the student of a TeacherStudent training checkpoint as a plain detector checkpoint: the
"student." prefix is dropped and the distillers (adapters) are left out, so that the plain student
config (MODEL.DISTILL.STUDENT_META_ARCHITECTURE with the same MODEL.* keys) loads it with no
missing or unexpected keys and gives the same detections. The teacher is not needed.

    python tools/export_student.py --config-file configs/quickstart/TID-GFL.yaml \
        --weights output/quickstart/TID-GFL/model_final.pth --output student.pth
"""
import argparse
import logging
import os
import sys
from typing import Dict, List, Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.file_io import PathManager  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from tid_d2.checkpoint import load_weights, student_state_dict  # noqa: E402
from tid_d2.engine.defaults import setup_cfg, student_cfg  # noqa: E402

logger = logging.getLogger("tid_d2.export_student")


def export_student(cfg, weights: str, output: str) -> Dict[str, torch.Tensor]:
    """
    Write {"model": student weights} to `output` and return those weights. They are first loaded
    strictly into the plain student built from `cfg` (on the CPU), so a checkpoint that does not
    fit the config is an error here rather than at evaluation.
    """
    scfg = student_cfg(cfg).clone()
    scfg.defrost()
    scfg.MODEL.DEVICE = "cpu"
    model = build_model(scfg)
    load_weights(model, weights, key="--weights", transform=student_state_dict)
    state = model.state_dict()
    out_dir = os.path.dirname(output)
    if out_dir:
        PathManager.mkdirs(out_dir)
    with PathManager.open(output, "wb") as f:
        torch.save({"model": state, "__author__": "tid_d2 export_student"}, f)
    logger.info(f"Wrote {len(state)} student tensors ({scfg.MODEL.META_ARCHITECTURE}) to {output}")
    return state


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="TeacherStudent (or student) config")
    parser.add_argument("--weights", required=True, help="a training checkpoint (model_*.pth)")
    parser.add_argument("--output", required=True, help="the student-only checkpoint to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    setup_logger(name="tid_d2")
    export_student(setup_cfg(args.config_file, args.opts), args.weights, args.output)


if __name__ == "__main__":
    main()
