"""TeacherStudent: a frozen teacher loaded strictly, gradients only into the student and adapters,
inference equal to the plain student, clear errors, and the TID hook / trainer on tiny runs."""
import copy
import json
import math
import os
from types import SimpleNamespace

import pytest
import torch

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg
from tid_d2.structures import DistillLayout
from tid_d2.distill.tid import TID
from tid_d2.engine import TIDTrainer
from tid_d2.engine.train_loop import check_finite_losses
from tid_d2.modeling.teacher_student import TeacherStudent, check_compatible
from tid_d2.checkpoint import student_state_dict
from tid_d2.engine.defaults import student_cfg

ATSS_TEACHER_CFG = os.path.join(REPO, "configs", "quickstart", "ATSS-teacher.yaml")
FCOS_STUDENT = ("MODEL.DISTILL.STUDENT_META_ARCHITECTURE", "FCOS", "MODEL.FCOS.NUM_CLASSES", "6",
                "MODEL.FCOS.NUM_CONVS", "2")


def tid_cfg(teachers, name="TID-GFL", teacher="GFL-teacher", *opts):
    return quickstart_cfg(name, "MODEL.TEACHER.WEIGHTS", teachers[teacher], *opts)


def build(cfg) -> TeacherStudent:
    torch.manual_seed(0)
    return build_model(cfg)


def batch(cfg, dataset: str, n: int = 2, is_train: bool = True):
    """The first `n` images of `dataset` as mapped model inputs (no flip: deterministic)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = DatasetMapper(cfg, is_train=is_train)
    return [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(dataset)[:n]]


def teacher_snapshot(model: TeacherStudent):
    return {k: v.detach().clone() for k, v in model.teacher.state_dict().items()}


PAIRS = {
    "GFL->GFL": ("TID-GFL", "GFL-teacher", ()),
    "ATSS->ATSS": ("TID-ATSS", "ATSS-teacher", ()),
    "ATSS->GFL": ("TID-GFL", "ATSS-teacher", ("MODEL.TEACHER.CONFIG_FILE", ATSS_TEACHER_CFG)),
    "ATSS->FCOS": (
        "TID-GFL", "ATSS-teacher", ("MODEL.TEACHER.CONFIG_FILE", ATSS_TEACHER_CFG) + FCOS_STUDENT
    ),
}


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_only_the_student_and_adapter_learn(pair, teachers, tiny_shapes):
    name, teacher, opts = PAIRS[pair]
    cfg = tid_cfg(teachers, name, teacher, *opts)
    model = build(cfg)
    assert type(model.student).__name__ == cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    assert type(model.teacher).__name__ == ("ATSS" if teacher.startswith("ATSS") else "GFL")
    teacher_ids = {id(p) for p in model.teacher.parameters()}
    assert teacher_ids and not teacher_ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith("teacher") or "._teacher" in k for k in model.state_dict())
    assert all(not p.requires_grad for p in model.teacher.parameters())
    adapter = model.distillers["tid"].adapter
    assert isinstance(adapter, torch.nn.Conv2d)  # student FPN: 32 channels, teacher: 64
    assert (adapter.in_channels, adapter.out_channels) == (32, 64)

    model.train()
    assert model.training and model.student.training and not model.teacher.training
    before = teacher_snapshot(model)
    data = batch(cfg, tiny_shapes[0])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for step in range(3):
        with EventStorage():  # Detectron2's FCOS logs to it
            losses = model(data)
        assert {"loss_tid_key", "loss_tid_weak", "loss_tid_other"} <= set(losses)
        opt.zero_grad()
        sum(losses.values()).backward()
        if step == 0:
            assert adapter.weight.grad is not None and adapter.weight.grad.abs().sum() > 0
            student_grads = [p.grad for p in model.student.parameters()]
            assert all(g is not None for g in student_grads)
            assert sum(float(g.abs().sum()) for g in student_grads) > 0
            assert all(p.grad is None for p in model.teacher.parameters())
        opt.step()
    assert not model.teacher.training
    after = teacher_snapshot(model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "teacher weights or BN stats changed"


def test_train_mode_keeps_teacher_in_eval(teachers, tiny_shapes):
    cfg = tid_cfg(teachers)
    model = build(cfg)
    model.teacher.train()  # even if someone flips it
    model.train()
    assert not model.teacher.training
    model.eval()
    assert not model.teacher.training and not model.student.training
    model.train()
    model.teacher.train()
    model(batch(cfg, tiny_shapes[0]))
    assert not model.teacher.training, "forward must put a teacher left in train mode back to eval"


@pytest.mark.parametrize("name,teacher", [("TID-GFL", "GFL-teacher"), ("TID-ATSS", "ATSS-teacher")])
def test_inference_is_exactly_the_plain_student(name, teacher, teachers, tiny_shapes):
    head = "GFL" if name == "TID-GFL" else "ATSS"
    opts = (f"MODEL.{head}.SCORE_THRESH_TEST", "0.0")  # a random student detects nothing at 0.05
    cfg = tid_cfg(teachers, name, teacher, *opts)
    model = build(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = model(batch(cfg, tiny_shapes[0]))
    sum(losses.values()).backward()
    opt.step()  # weights away from their initialization

    plain = build_model(student_cfg(cfg))
    plain.load_state_dict(student_state_dict(model.state_dict()), strict=True)
    model.eval()
    plain.eval()
    data = batch(cfg, tiny_shapes[1], n=3, is_train=False)
    with torch.no_grad():
        got, want = model(data), plain(data)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        g, w = g["instances"], w["instances"]
        assert len(w) > 0
        assert torch.equal(g.pred_boxes.tensor, w.pred_boxes.tensor)
        assert torch.equal(g.scores, w.scores)
        assert torch.equal(g.pred_classes, w.pred_classes)


# ----- errors -----------------------------------------------------------------------------------
def test_missing_teacher_checkpoint_names_the_path(teachers, tmp_path):
    path = str(tmp_path / "no_such_teacher.pth")
    with pytest.raises(FileNotFoundError, match="no_such_teacher.pth"):
        build(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", path))
    with pytest.raises(ValueError, match="MODEL.TEACHER.WEIGHTS is empty"):
        build(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", ""))


def test_teacher_checkpoint_of_another_architecture(teachers):
    # an ATSS checkpoint for the GFL teacher config: head keys and shapes differ
    with pytest.raises(ValueError) as e:
        build(tid_cfg(teachers, "TID-GFL", "ATSS-teacher"))
    msg = str(e.value)
    assert teachers["ATSS-teacher"] in msg and "MODEL.TEACHER.CONFIG_FILE" in msg
    assert "head." in msg and ("shape mismatch" in msg or "missing in file" in msg)


def test_teacher_checkpoint_with_other_num_classes(teachers):
    with pytest.raises(ValueError) as e:
        build(tid_cfg(teachers, "TID-GFL", "GFL-teacher-5cls"))
    msg = str(e.value)
    assert teachers["GFL-teacher-5cls"] in msg and "shape mismatch" in msg
    assert "(5," in msg and "(6," in msg  # the class dimension in file vs model


def test_teacher_student_class_mismatch(teachers):
    opts = ("MODEL.TEACHER.OPTS", "['MODEL.GFL.NUM_CLASSES', 5]")
    cfg = tid_cfg(teachers, "TID-GFL", "GFL-teacher-5cls", *opts)
    with pytest.raises(ValueError, match="teacher has 5 classes but the student has 6"):
        build(cfg)


def test_check_compatible_strides_and_classes():
    common = dict(feature_channels=8, has_box_distributions=True, forward_distill=None)
    teacher = SimpleNamespace(num_classes=6, strides=[8, 16, 32, 64, 128], **common)
    student = SimpleNamespace(num_classes=6, strides=[8, 16, 32, 64], **common)
    with pytest.raises(ValueError, match=r"teacher FPN strides \[8, 16, 32, 64, 128\] differ"):
        check_compatible(teacher, student)
    student.strides = list(teacher.strides)
    assert check_compatible(teacher, student) == DistillLayout(8, 8, (8, 16, 32, 64, 128), 6, True)
    student.num_classes = 80
    with pytest.raises(ValueError, match="80"):
        check_compatible(teacher, student)


def test_teacher_config_problems(teachers, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_teacher.yaml"):
        build(tid_cfg(teachers, "TID-GFL", "GFL-teacher",
                      "MODEL.TEACHER.CONFIG_FILE", "no_such_teacher.yaml"))
    tid_yaml = os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml")
    with pytest.raises(ValueError, match="itself a TeacherStudent"):
        build(tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.TEACHER.CONFIG_FILE", tid_yaml))


def test_unknown_config_key_is_a_clear_error():
    with pytest.raises(KeyError, match=r"TID-GFL.yaml: unknown config key .*NOT_A_KEY.*config.py"):
        quickstart_cfg("TID-GFL", "MODEL.DISTILL.TID.NOT_A_KEY", "1")


def test_unknown_distill_method_lists_the_known_ones(teachers):
    with pytest.raises(KeyError, match=r"unknown methods \['nope'\].*'fitnet'.*'tid'"):
        build(tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.METHODS", "['NOPE']"))


def test_ld_with_an_atss_student_is_a_clear_error(teachers):
    with pytest.raises(ValueError, match="'ld' needs GFL box distributions.*does not give"):
        build(tid_cfg(teachers, "TID-ATSS", "ATSS-teacher", "MODEL.DISTILL.METHODS", "['LD']"))


# ----- TID hook and trainer ---------------------------------------------------------------------
def test_warmup_ramps_every_distillers_loss_scale(teachers, tiny_shapes):
    cfg = tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.METHODS", "['TID', 'FITNET']",
                  "MODEL.DISTILL.WARMUP_ITERS", "4")
    model = build(cfg)
    data = batch(cfg, tiny_shapes[0])
    with EventStorage() as storage, torch.no_grad():
        for it, want in ((0, 0.25), (1, 0.5), (2, 0.75), (3, 1.0), (7, 1.0)):
            storage.iter = it
            model(data)
            assert [d.loss_scale for d in model.distillers.values()] == [want, want]
            assert storage.history("distill/weight").latest() == want

        # the scale multiplies the distillation losses, not the detection ones
        storage.iter = 7
        full = model(data)
        storage.iter = 0
        quarter = model(data)
    for k in full:
        factor = 0.25 if k.startswith(("loss_tid", "loss_fitnet")) else 1.0
        assert torch.allclose(quarter[k], full[k] * factor, rtol=1e-5, atol=1e-7), k
    assert float(full["loss_fitnet"]) > 0


def tiny_train_cfg(teachers, tmp_path, *opts):
    return tid_cfg(teachers, "TID-GFL", "GFL-teacher", "OUTPUT_DIR", str(tmp_path), *opts)


def test_end_to_end_run_logs_losses_diagnostics_and_teacher_eval(teachers, tiny_shapes, tmp_path):
    cfg = tiny_train_cfg(
        teachers, tmp_path, "MODEL.DISTILL.WARMUP_ITERS", "2", "TEST.EVAL_TEACHER", "True",
        "MODEL.DISTILL.LOG_PERIOD", "1",
    )
    seed_all_rng(0)
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = teacher_snapshot(trainer.model)
    trainer.train()
    assert trainer.iter == cfg.SOLVER.MAX_ITER == 4
    assert all(torch.equal(v, trainer.model.teacher.state_dict()[k]) for k, v in before.items())

    records = [json.loads(line) for line in open(tmp_path / "metrics.json")]
    train = [r for r in records if "total_loss" in r]
    assert train and train[-1]["iteration"] == 3
    last = train[-1]
    for k in ("loss_tid_key", "loss_tid_weak", "loss_tid_other", "loss_gfl_cls", "total_loss"):
        assert math.isfinite(last[k]), k
    for lvl in ("p3", "p4", "p5", "p6", "p7"):
        for stat in ("frac_key", "frac_weak", "frac_other", "imp_teacher", "imp_student"):
            assert f"tid/{lvl}/{stat}" in last
        fracs = [last[f"tid/{lvl}/frac_{area}"] for area in ("key", "weak", "other")]
        assert sum(fracs) == pytest.approx(1.0)
    assert last["distill/weight"] == 1.0
    assert any("teacher/bbox/AP" in r for r in records), "TEST.EVAL_TEACHER result not logged"

    ckpt = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    assert "distillers.tid.adapter.weight" in ckpt["model"]
    assert not any(k.startswith("teacher") for k in ckpt["model"])
    assert set(student_state_dict(ckpt["model"])) == set(trainer.model.student.state_dict())


def test_nan_loss_stops_training_naming_loss_and_iteration(
    teachers, tiny_shapes, tmp_path, monkeypatch
):
    calls = {"n": 0}
    forward = TID.forward

    def nan_from_second_call(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 2:
            out["loss_tid_weak"] = out["loss_tid_weak"] * float("nan")
        return out

    monkeypatch.setattr(TID, "forward", nan_from_second_call)
    cfg = tiny_train_cfg(teachers, tmp_path, "DATASETS.TEST", "()")
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)

    class Snapshot(HookBase):
        def before_step(self):
            self.weights = {k: v.detach().clone() for k, v in self.trainer.model.named_parameters()}

    snap = Snapshot()
    trainer.register_hooks([snap])
    with pytest.raises(FloatingPointError, match=r"iteration 1: \{'loss_tid_weak': nan\}"):
        trainer.train()
    after = dict(trainer.model.named_parameters())
    assert all(torch.equal(snap.weights[k], after[k]) for k in after), "optimizer stepped on a NaN loss"


def test_check_finite_losses_names_every_bad_loss():
    ok = check_finite_losses({"a": torch.tensor(1.0), "b": torch.tensor([2.0])}, 5)
    assert {k: float(v) for k, v in ok.items()} == {"a": 1.0, "b": 2.0}
    with pytest.raises(FloatingPointError, match=r"iteration 7: \{'b': inf, 'c': nan\}"):
        losses = {"a": 1.0, "b": float("inf"), "c": float("nan")}
        check_finite_losses({k: torch.tensor(v) for k, v in losses.items()}, 7)


def test_vis_period_puts_area_sheets_into_event_storage(teachers, tiny_shapes):
    from detectron2.utils.events import EventStorage

    from tid_d2.visualization import visualization_hooks

    cfg = tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.TID.VIS_PERIOD", "2")
    model = build(cfg)
    model.train()
    inputs = batch(cfg, tiny_shapes[0])
    (hook,) = visualization_hooks(model)  # the one train_net.py and lazy_train_net.py register
    assert visualization_hooks(build(tid_cfg(teachers))) == []  # VIS_PERIOD 0: no hook
    with EventStorage(0) as storage:
        hook.trainer = SimpleNamespace(storage=storage)
        for it in range(3):
            storage.iter = it
            model(inputs)
            assert (model.distillers["tid"].view is not None) == (it % 2 == 0)
            hook.after_step()
            assert model.distillers["tid"].view is None
    images = storage._vis_data
    assert [name for name, _, _ in images] == ["tid/areas", "tid/areas"]
    assert [step for _, _, step in images] == [0, 2]
    img = images[0][1]
    assert img.ndim == 3 and img.shape[0] == 3 and img.dtype.name == "uint8"


def test_amp_on_the_cpu_is_a_clear_error(teachers, tmp_path):
    cfg = tiny_train_cfg(teachers, tmp_path, "SOLVER.AMP.ENABLED", "True")
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED=True needs a CUDA device"):
        TIDTrainer(cfg)


def test_diverged_weights_stop_training_naming_the_iteration(teachers, tiny_shapes, tmp_path):
    """NaN weights after a step give NaN boxes: a FloatingPointError naming the iteration, not
    fvcore's bare "bad box" assertion."""
    cfg = tiny_train_cfg(teachers, tmp_path, "DATASETS.TEST", "()")
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)

    class PoisonWeights(HookBase):
        def after_step(self):
            if self.trainer.iter == 1:
                with torch.no_grad():
                    for p in self.trainer.model.student.head.parameters():
                        p.fill_(float("nan"))

    trainer.register_hooks([PoisonWeights()])
    with pytest.raises(FloatingPointError, match="non-finite .*at iteration 2"):
        trainer.train()


def test_direct_construction_also_checks_box_distributions(teachers):
    """The LazyConfig path calls TeacherStudent(...) directly: LD on ATSS is refused there too."""
    from tid_d2.distill import build_distillers

    cfg = tid_cfg(teachers, "TID-ATSS", "ATSS-teacher", "MODEL.DISTILL.METHODS", "['LD']")
    atss = lambda: build_model(quickstart_cfg("ATSS-student"))  # noqa: E731
    distillers = build_distillers(cfg.MODEL.DISTILL, DistillLayout(32, 32, box_distributions=True))
    with pytest.raises(ValueError, match="'ld' needs GFL box distributions.*does not give"):
        TeacherStudent(student=atss(), teacher=atss(), distillers=distillers)
    with pytest.raises(ValueError, match="'ld' needs GFL box distributions"):
        build_distillers(cfg.MODEL.DISTILL, DistillLayout(32, 32))
