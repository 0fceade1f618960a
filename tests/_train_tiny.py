#!/usr/bin/env python
"""
projects/TID/train_net.py (a .yaml --config-file) or lazy_train_net.py (a .py one) with the tests'
tiny tid_shapes datasets registered in every process (DDP workers included), for tests that run
training in a subprocess:

    TID_TINY_ROOT=/tmp/ds [TID_TINY_SIDES=128,128] python tests/_train_tiny.py <train_net.py args>

The datasets are named as in conftest.py (tid_shapes_tiny_train / _val: 16 and 8 images); their
image sides are drawn from TID_TINY_SIDES (default 128,192, as in conftest.py).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "projects", "TID"))

import lazy_train_net  # noqa: E402
import train_net  # noqa: E402  (also puts the repository on sys.path)
from detectron2.data import DatasetCatalog  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402

from tid_d2.data import register_shapes  # noqa: E402

TINY_TRAIN, TINY_VAL = "tid_shapes_tiny_train", "tid_shapes_tiny_val"


def register_tiny() -> None:
    root = os.environ["TID_TINY_ROOT"]
    sides = tuple(int(s) for s in os.environ.get("TID_TINY_SIDES", "128,192").split(","))
    if TINY_TRAIN not in DatasetCatalog:
        register_shapes(TINY_TRAIN, "train", root=root, num_images=16, sides=sides)
        register_shapes(TINY_VAL, "val", root=root, num_images=8, sides=sides)


def main(args):
    register_tiny()
    entry_point = lazy_train_net if args.config_file.endswith(".py") else train_net
    return entry_point.main(args)


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
