"""Every checkpoint read names its source: a file that cannot be read (truncated, not a checkpoint,
a directory) is an error naming the config key or flag and the file, for the teacher, MODEL.WEIGHTS,
train.init_checkpoint, --resume, --eval-only (YAML and LazyConfig) and the export tool."""
import os
import sys

import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig
from detectron2.modeling import build_model

from conftest import REPO, quickstart_cfg
from test_lazy_config import load_lazy, tiny_lazy_args
from tid_d2.checkpoint import read_error
from tid_d2.engine import TIDTrainer
from tid_d2.engine.defaults import build_eval_model
from tid_d2.engine.lazy import build_lazy_eval_model, build_lazy_trainer

sys.path.insert(0, os.path.join(REPO, "tools"))
import export_student  # noqa: E402

sys.path.pop(0)

BAD = ["truncated", "text", "directory"]
# what each bad file makes the message say after "<key>=<path>"
SAYS = r"(cannot be read as a checkpoint.*truncated|is a directory; expected a checkpoint file)"


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    """A quickstart GFL student checkpoint (the source of the truncated file)."""
    out = tmp_path_factory.mktemp("good")
    DetectionCheckpointer(build_model(quickstart_cfg("GFL-student")), save_dir=str(out)).save("student")
    return str(out / "student.pth")


def bad_file(kind: str, good: str, folder) -> str:
    """A checkpoint path that cannot be read: half of a good file, a text file or a directory."""
    if kind == "truncated":
        data = open(good, "rb").read()
        path = folder / "cut.pth"
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path = folder / "notes.pth"
        path.write_text("not a checkpoint")
    else:
        path = folder / "a_folder.pth"
        path.mkdir()
    return str(path)


def lazy_cfg(name: str, tiny_shapes, out, *overrides):
    """configs/lazy/quickstart/<name> on the tiny dataset, plus `overrides`."""
    overrides = tiny_lazy_args(name, out, tiny_shapes)[2:] + list(overrides)
    return LazyConfig.apply_overrides(load_lazy(f"quickstart/{name}"), overrides)


@pytest.mark.parametrize("kind", BAD)
def test_model_weights(kind, good_checkpoint, tiny_shapes, tmp_path):
    path = bad_file(kind, good_checkpoint, tmp_path)
    cfg = quickstart_cfg("GFL-student", "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path / "o"))
    trainer = TIDTrainer(cfg)
    with pytest.raises(ValueError, match=rf"MODEL.WEIGHTS={path} {SAYS}"):
        trainer.resume_or_load(resume=False)


@pytest.mark.parametrize("kind", BAD)
def test_teacher_weights(kind, good_checkpoint, tmp_path):
    path = bad_file(kind, good_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=rf"MODEL.TEACHER.WEIGHTS={path} {SAYS}"):
        build_model(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", path))


@pytest.mark.parametrize("kind", BAD)
def test_eval_only(kind, good_checkpoint, tiny_shapes, tmp_path):
    path = bad_file(kind, good_checkpoint, tmp_path)
    with pytest.raises(ValueError, match=rf"MODEL.WEIGHTS={path} {SAYS}"):
        build_eval_model(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", "/nonexistent.pth"), path)
    cfg = lazy_cfg("tid_gfl.py", tiny_shapes, tmp_path / "o", f"train.init_checkpoint={path}")
    with pytest.raises(ValueError, match=rf"train.init_checkpoint={path} {SAYS}"):
        build_lazy_eval_model(cfg)


@pytest.mark.parametrize("kind", BAD)
def test_lazy_init_checkpoint(kind, good_checkpoint, tiny_shapes, tmp_path):
    path = bad_file(kind, good_checkpoint, tmp_path)
    cfg = lazy_cfg("gfl_student.py", tiny_shapes, tmp_path / "o", f"train.init_checkpoint={path}")
    with pytest.raises(ValueError, match=rf"train.init_checkpoint={path} {SAYS}"):
        build_lazy_trainer(cfg, resume=False)


@pytest.mark.parametrize("kind", BAD)
def test_export_tool(kind, good_checkpoint, tmp_path):
    path = bad_file(kind, good_checkpoint, tmp_path)
    config = os.path.join(REPO, "configs", "quickstart", "GFL-student.yaml")
    output = str(tmp_path / "student.pth")
    with pytest.raises(ValueError, match=rf"--weights={path} {SAYS}"):
        export_student.main(["--config-file", config, "--weights", path, "--output", output])
    assert not os.path.exists(output)  # nothing written


@pytest.mark.parametrize("entry", ["yaml", "lazy"])
def test_resume_from_a_truncated_last_checkpoint(entry, good_checkpoint, tiny_shapes, tmp_path):
    """--resume whose last checkpoint is cut: the error names --resume, the file and the way out."""
    out = tmp_path / "o"
    out.mkdir()
    path = bad_file("truncated", good_checkpoint, out)
    (out / "last_checkpoint").write_text(os.path.basename(path))
    says = (rf"--resume: the last checkpoint {path} cannot be read .*"
            rf"point {out / 'last_checkpoint'} at an earlier one")
    if entry == "yaml":
        trainer = TIDTrainer(quickstart_cfg("GFL-student", "OUTPUT_DIR", str(out)))
        with pytest.raises(ValueError, match=says):
            trainer.resume_or_load(resume=True)
    else:
        with pytest.raises(ValueError, match=says):
            build_lazy_trainer(lazy_cfg("gfl_student.py", tiny_shapes, out), resume=True)


def test_read_errors_are_cut_at_a_sentence_end():
    text = ("PytorchStreamReader failed reading zip archive: failed finding central directory. "
            "This is an internal miniz error. " + "More words follow here. " * 10)
    got = read_error(RuntimeError(text))
    message = got[len("RuntimeError: "):]
    assert got.startswith("RuntimeError: ") and text.startswith(message)
    assert message.endswith("here.") and len(message) <= 200 < len(message) + len("More words follow here. ")
    assert read_error(ValueError("x" * 300), limit=10) == "ValueError: " + "x" * 10 + "..."
    assert read_error(OSError("short\n  message")) == "OSError: short message"
