"""The distiller contract: a method declares its config node, main weights and build; config and
builders read the registry; old MODEL.TID keys name their new place; drawing stays out of the
training core; TIDTrainer's copy of Detectron2's constructor is pinned to upstream's."""
import hashlib
import inspect
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg, instantiate
from detectron2.engine import DefaultTrainer
from detectron2.layers import ShapeSpec
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg
from test_lazy_config import load_lazy
from test_teacher_student import batch
from tid_d2.config import add_tid_config
from tid_d2.distill import DISTILLER_REGISTRY, Distiller, registered_methods
from tid_d2.structures import DistillLayout

CONFIG_DEFAULTS = add_tid_config(get_cfg())


@pytest.mark.parametrize("name", sorted(registered_methods()))
def test_each_method_owns_its_node_and_its_defaults(name):
    """MODEL.DISTILL.<NAME> is the method's declaration, and no constructor repeats a default."""
    cls = registered_methods()[name]
    node = CONFIG_DEFAULTS.MODEL.DISTILL[name.upper()]
    assert dict(node) == {k: v for k, (v, _) in cls.config.items()}
    assert all(isinstance(text, str) and text for _, text in cls.config.values())
    assert set(cls.main_weights) <= set(cls.config) and cls.main_weights
    for klass in cls.__mro__[: cls.__mro__.index(Distiller) + 1]:
        if "__init__" in vars(klass):
            params = inspect.signature(vars(klass)["__init__"]).parameters.values()
            with_default = [p.name for p in params if p.default is not inspect.Parameter.empty]
            assert not with_default, f"{klass.__name__}.__init__ repeats defaults of {with_default}"


def test_a_wrong_declaration_fails_when_the_config_is_made():
    class BADKD(Distiller):
        config = {"loss_weight": (1.0, "lower-case key")}

    class WORSEKD(Distiller):
        config = {"LOSS_WEIGHT": (1.0, "weight")}
        main_weights = ("ALPHA",)

    with pytest.raises(TypeError, match="BADKD.*loss_weight"):
        BADKD.default_node()
    with pytest.raises(TypeError, match="WORSEKD.*ALPHA"):
        WORSEKD.default_node()
    assert "BADKD" not in dict(DISTILLER_REGISTRY)
    with pytest.raises(TypeError, match="name is its class name"):
        type("RENAMEDKD", (Distiller,), {"name": "other"})


def test_an_old_model_tid_key_names_the_new_one(tmp_path):
    cfg = CONFIG_DEFAULTS.clone()
    with pytest.raises(KeyError, match=r"MODEL.TID.ALPHA was renamed to MODEL.DISTILL.TID.ALPHA"):
        cfg.merge_from_list(["MODEL.TID.ALPHA", "1.0"])
    path = tmp_path / "old.yaml"
    path.write_text("MODEL:\n  TID:\n    ALPHA: 1.0\n")
    with pytest.raises(KeyError, match=r"MODEL.TID was renamed to MODEL.DISTILL.TID"):
        cfg.merge_from_file(str(path))
    old_fgd = tmp_path / "fgd.yaml"  # a config.yaml written before FGD's level count left the config
    old_fgd.write_text("MODEL:\n  DISTILL:\n    FGD:\n      NUM_LEVELS: 5\n")
    cfg.merge_from_file(str(old_fgd))
    assert "NUM_LEVELS" not in cfg.MODEL.DISTILL.FGD
    assert add_tid_config(cfg) is cfg  # adding the keys again is harmless


def test_the_training_core_imports_no_matplotlib():
    code = ("import sys, tid_d2, tid_d2.engine, tid_d2.modeling, tid_d2.distill, tid_d2.checkpoint, "
            "tid_d2.data; print('matplotlib' in sys.modules); import tid_d2.visualization; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


#: sha256 of Detectron2's DefaultTrainer.__init__ source that TIDTrainer.__init__ mirrors (it swaps in
#: this project's step trainer, DDP wrapper and checkpointer, which upstream builds inline)
UPSTREAM_TRAINER_INIT = "d7a2d8646201904756a9ea89a504933a9dacff5a923192368c757a31b0999b05"


def test_tid_trainer_constructor_follows_upstreams():
    source = inspect.getsource(DefaultTrainer.__init__)
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == UPSTREAM_TRAINER_INIT, (
        "Detectron2's DefaultTrainer.__init__ changed: re-check tid_d2/engine/trainer.py::TIDTrainer.__init__ "
        f"(it mirrors upstream's statements) and then update UPSTREAM_TRAINER_INIT to {digest}"
    )


def test_fgd_on_a_lazy_three_level_pair_has_three_levels(teachers, tiny_shapes, tmp_path):
    """A LazyConfig pair distilled on P3-P5 only: FGD's level count comes from the built models, not
    from a YAML default of another detector (GFL's five levels)."""
    from detectron2.checkpoint import DetectionCheckpointer

    lz = load_lazy("quickstart/tid_gfl.py")
    for m in (lz.model.student, lz.model.teacher.teacher):
        m.head_in_features = ["p3", "p4", "p5"]
        m.head.input_shape = [ShapeSpec(channels=s.channels) for s in m.head.input_shape[:3]]
    torch.manual_seed(1)
    teacher = instantiate(lz.model.teacher.teacher)
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher3")
    lz.model.teacher.weights = str(tmp_path / "teacher3.pth")
    lz.model.distillers.methods = ["FGD"]
    model = instantiate(lz.model).train()
    fgd = model.distillers["fgd"]
    assert len(fgd.adapters) == len(fgd.student_context) == len(model.student.strides) == 3
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"])
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    assert {"loss_fgd_fg", "loss_fgd_relation"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_the_example_method_is_one_file():
    """examples/cosine_kd.py imports only the public package: nothing to register elsewhere."""
    text = open(os.path.join(REPO, "examples", "cosine_kd.py")).read()
    assert "@DISTILLER_REGISTRY.register()" in text and "config = {" in text
