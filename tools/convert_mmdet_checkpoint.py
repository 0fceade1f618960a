#!/usr/bin/env python
"""
Convert an mmdetection (2.x or 3.x) GFL or ATSS ResNet-FPN checkpoint, e.g. from its model zoo, into a
checkpoint of this project. With --config-file (a configs/mmdet/ config) the file is checked against
the config (detector, depth, classes, mmdetection's layout) and the written checkpoint is loaded
strictly into the model the config builds: no missing or unexpected keys, no shape differences.

    python tools/convert_mmdet_checkpoint.py --input gfl_r101_fpn_mstrain_2x_coco_20200629_200126-dd12f847.pth \
        --config-file configs/mmdet/GFL-R101-2x-ms.yaml --output output/mmdet/GFL-R101-2x-ms.pth

--output defaults to the config's MODEL.WEIGHTS. Trailing KEY VALUE pairs override the config.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from tid_d2.checkpoint import load_weights  # noqa: E402
from tid_d2.convert import convert_mmdet_checkpoint  # noqa: E402
from tid_d2.engine.defaults import setup_cfg  # noqa: E402

logger = logging.getLogger("tid_d2.convert_mmdet")

#: what a config must say to compute as mmdetection's GFL/ATSS (key, value, getter)
_MMDET_LAYOUT = (
    ("INPUT.FORMAT", "RGB", lambda c: c.INPUT.FORMAT),
    ("MODEL.RESNETS.STRIDE_IN_1X1", False, lambda c: c.MODEL.RESNETS.STRIDE_IN_1X1),
    ("MODEL.FPN.P7_RELU", False, lambda c: c.MODEL.FPN.P7_RELU),
)


def check_mmdet_layout(cfg, config_file: str) -> None:
    """The weights load into any GFL/ATSS config of the same shapes, but only a config in
    mmdetection's layout computes what they were trained for: refuse the others."""
    if cfg.MODEL.META_ARCHITECTURE not in ("GFL", "ATSS"):
        raise ValueError(
            f"{config_file} builds {cfg.MODEL.META_ARCHITECTURE}; give a plain GFL or ATSS config "
            "(configs/mmdet/*.yaml)"
        )
    wrong = [f"{k} {get(cfg)!r} (needs {v!r})" for k, v, get in _MMDET_LAYOUT if get(cfg) != v]
    if wrong:
        raise ValueError(
            f"{config_file} is not in mmdetection's layout: {', '.join(wrong)}. The converted "
            "weights would load but compute something else; use configs/mmdet/*.yaml"
        )


def convert(args: argparse.Namespace) -> str:
    """Convert `args.input`; check and strictly load it with `args.config_file` if given. Returns the
    output path. A file that fails the load is removed, not left behind as if usable."""
    cfg = None
    if args.config_file:
        cfg = setup_cfg(args.config_file, list(args.opts) + ["MODEL.DEVICE", "cpu"])
        check_mmdet_layout(cfg, args.config_file)
    elif args.opts:
        raise ValueError(f"config overrides {args.opts} need --config-file")
    output = args.output or (cfg.MODEL.WEIGHTS if cfg is not None else "")
    if not output:
        raise ValueError("give --output (or a --config-file whose MODEL.WEIGHTS names the output)")
    if os.path.abspath(output) == os.path.abspath(args.input):
        raise ValueError(f"--output {output} is the --input file: it would be overwritten")
    if os.path.dirname(output):
        os.makedirs(os.path.dirname(output), exist_ok=True)
    arch = cfg.MODEL.META_ARCHITECTURE if cfg is not None else None
    convert_mmdet_checkpoint(
        args.input,
        output,
        depth=cfg.MODEL.RESNETS.DEPTH if cfg is not None else None,
        meta_architecture=arch,
        num_classes=getattr(cfg.MODEL, arch).NUM_CLASSES if cfg is not None else None,
        trust_pickle=args.trust_pickle,
        log=logger.info,
    )
    if cfg is None:
        logger.warning("no --config-file: the output was not test-loaded into a model")
        return output
    try:
        load_weights(build_model(cfg), output, key="--output", source=args.config_file, transform=None)
    except Exception:
        os.remove(output)
        raise
    logger.info(
        f"checked: {output} loads into the {arch} of {args.config_file} with no missing or "
        "unexpected keys"
    )
    return output


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="the mmdetection checkpoint (.pth)")
    parser.add_argument("--config-file", default="", help="the configs/mmdet/ config it is for")
    parser.add_argument("--output", default="", help="where to write (default: MODEL.WEIGHTS)")
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="read files whose metadata holds Python objects (unsafe for untrusted files)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    setup_logger(name="tid_d2")
    try:
        convert(args)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"convert_mmdet_checkpoint: error: {e}")


if __name__ == "__main__":
    main()
