"""tools/tid_loss_scales.py: TID's per-area loss scales of both SFDM readings on a few batches."""
import os

import pytest

from conftest import REPO, tiny_run_opts
from test_tools_vis import load_tool


def test_scales_of_both_readings(teachers, tiny_shapes, capsys):
    tool = load_tool("tid_loss_scales")
    config = os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml")
    opts = tiny_run_opts() + ["MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"], "MODEL.DEVICE", "cpu"]
    out = tool.main(["--config-file", config, "--batches", "2", *opts])
    assert '"tid/mean_other"' in capsys.readouterr().out
    assert out["detection_loss"] == pytest.approx(out["loss_gfl_cls"] + out["loss_gfl_box"] + out["loss_gfl_dfl"])
    # "all" reading: L_O = mean_other * |O| / (N * A) <= mean_other, times lambda * gamma (2 x 0.5)
    assert 0 < out["loss_tid_other"] <= out["tid/mean_other"] * 1.0 + 1e-6
    with pytest.raises(ValueError, match="without TID"):
        tool.main(["--config-file", config, "--batches", "1", *opts, "MODEL.DISTILL.METHODS", "['FITNET']"])
