"""What keeps distillation from a weak teacher finite: feature losses on the teacher's scale
(MODEL.DISTILL.FEATURE_NORM "teacher_rms") and a bound on the joint gradient norm
(MODEL.DISTILL.MAX_GRAD_NORM, train.distill.max_grad_norm)."""
import re

import pytest
import torch
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn

from tid_d2.distill.helpers import normalize_feature_pairs
from tid_d2.engine import TIDTrainer
from tid_d2.engine.trainer import distill_max_grad_norm
from tid_d2.engine.train_loop import build_step_trainer

from conftest import quickstart_cfg
from test_peer_distillers import build, make_outputs, make_targets, twin
from test_tid import build as build_tid
from test_tid import make_pair as make_tid_pair
from test_tid import make_targets as make_tid_targets

FEATURE_METHODS = ["FITNET", "FGD", "PKD", "CWD"]


def _scaled(outputs, k):
    """`outputs` with every FPN feature map multiplied by k (fresh leaves)."""
    out = twin(outputs)
    out.features = [(f.detach() * k).requires_grad_() for f in outputs.features]
    return out


def test_teacher_rms_divides_each_level_by_its_teacher_rms():
    g = torch.Generator().manual_seed(0)
    t = [torch.randn(2, 4, 3, 3, generator=g) * 5, torch.randn(2, 4, 2, 2, generator=g) * 0.1]
    s = [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 2, 2, generator=g)]
    out = normalize_feature_pairs(list(zip(t, s)), "teacher_rms")
    for (tn, sn), ft, fs in zip(out, t, s):
        rms = ft.pow(2).mean().sqrt()
        assert torch.allclose(tn, ft / rms) and torch.allclose(sn, fs / rms)
        assert torch.allclose(tn.pow(2).mean(), torch.tensor(1.0))
    same = normalize_feature_pairs(list(zip(t, s)), "none")
    assert all(a is ft and b is fs for (a, b), ft, fs in zip(same, t, s))
    zero = normalize_feature_pairs([(torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2))], "teacher_rms")
    assert torch.isfinite(zero[0][1]).all()


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_feature_losses_on_the_teacher_scale_ignore_the_feature_magnitude(name):
    """Teacher and student features 30x larger give the same losses under teacher_rms; under
    "none" FitNet's (and FGD's fg/bg) grow with the square of the scale."""
    teacher, student, targets = make_outputs(1), make_outputs(2), make_targets()
    ref = build(name, **{"FEATURE_NORM": "teacher_rms"})(teacher, student, targets)
    big = build(name, **{"FEATURE_NORM": "teacher_rms"})(_scaled(teacher, 30), _scaled(student, 30), targets)
    assert set(ref) == set(big)
    for k in ref:
        assert torch.allclose(ref[k], big[k], rtol=1e-4, atol=1e-6), (k, ref[k], big[k])
    if name == "FITNET":
        raw = build(name)(teacher, student, targets)["loss_fitnet"]
        raw_big = build(name)(_scaled(teacher, 30), _scaled(student, 30), targets)["loss_fitnet"]
        assert torch.allclose(raw_big, raw * 900, rtol=1e-4)
        rms = [t.detach().pow(2).mean().sqrt() for t in teacher.features]
        diff = torch.cat([((s - t) / r).reshape(-1) for s, t, r in zip(student.features, teacher.features, rms)])
        assert torch.allclose(ref["loss_fitnet"], diff.pow(2).mean())


def test_tid_on_the_teacher_scale_ignores_the_feature_magnitude():
    teacher, student = make_tid_pair()
    targets = make_tid_targets()
    tid = build_tid(feature_norm="teacher_rms")
    ref = tid(teacher, student, targets)
    for out in (teacher, student):
        out.features = [f * 30 for f in out.features]
    big = tid(teacher, student, targets)
    raw = build_tid()(teacher, student, targets)
    for k in ref:
        assert torch.allclose(ref[k], big[k], rtol=1e-4, atol=1e-6), k
    assert raw["loss_tid_other"] > 100 * ref["loss_tid_other"]


def test_unknown_feature_norm_is_a_named_error():
    with pytest.raises(ValueError, match="MODEL.DISTILL.FEATURE_NORM must be one of"):
        build("FITNET", **{"FEATURE_NORM": "batchnorm"})
    with pytest.raises(ValueError, match="MODEL.DISTILL.FEATURE_NORM must be one of"):
        build_tid(feature_norm="rms")


class _Quadratic(nn.Module):
    """loss = 1e4 * ||w||^2 on a 3-vector: a gradient of norm 2e4 * ||w||."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([1.0, 2.0, 2.0]))

    def forward(self, _batch):
        return {"loss": 1e4 * self.w.pow(2).sum()}


def _one_step(max_grad_norm):
    model = _Quadratic()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    trainer = build_step_trainer(model, iter([None] * 2), opt, max_grad_norm=max_grad_norm)
    with EventStorage(0) as storage:
        trainer.iter = 0
        trainer.storage = storage
        trainer.run_step()
        grad = model.w.grad.norm().item()
    return model, grad, storage


def test_full_model_clipping_bounds_the_joint_gradient_norm_and_logs_it():
    model, grad, storage = _one_step(35.0)
    assert grad == pytest.approx(35.0, rel=1e-5)  # the norm before clipping is 2e4 * 3
    assert storage.history("grad_norm").latest() == pytest.approx(6e4, rel=1e-5)
    assert storage.history("grad_clipped_steps").latest() == 1
    assert torch.isfinite(model.w).all() and model.w.norm().item() < 3 + 35.0 + 1e-3
    _, grad, storage = _one_step(None)
    assert grad == pytest.approx(6e4, rel=1e-5) and "grad_norm" not in storage.histories()
    with pytest.raises(ValueError, match="must be > 0"):
        _one_step(0.0)


def test_distillation_clips_the_joint_gradient_norm_by_default(tiny_shapes, teachers):
    """MODEL.DISTILL.MAX_GRAD_NORM reaches the step trainer of a TeacherStudent (0 switches it
    off); a plain detector is not clipped; a negative bound is a named error."""
    weights = ["MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"]]
    cfg = quickstart_cfg("TID-GFL", *weights)
    assert distill_max_grad_norm(cfg) == 35.0
    assert TIDTrainer(cfg)._trainer.max_grad_norm == 35.0
    assert distill_max_grad_norm(quickstart_cfg("TID-GFL", *weights, "MODEL.DISTILL.MAX_GRAD_NORM", "0.0")) is None
    assert distill_max_grad_norm(quickstart_cfg("GFL-student")) is None
    with pytest.raises(ValueError, match="MODEL.DISTILL.MAX_GRAD_NORM must be >= 0"):
        distill_max_grad_norm(quickstart_cfg("TID-GFL", *weights, "MODEL.DISTILL.MAX_GRAD_NORM", "-1.0"))


@pytest.fixture(scope="module")
def loud_teacher(teachers, tmp_path_factory):
    """The random quickstart GFL teacher with every FPN output conv 300x larger: FPN features of
    about 300x the usual magnitude, as a barely trained teacher's can be."""
    state = torch.load(teachers["GFL-teacher"], map_location="cpu", weights_only=False)
    for k in list(state["model"]):
        if re.match(r"backbone\.fpn_output\d\.(weight|bias)$", k):
            state["model"][k] = state["model"][k] * 300
    path = tmp_path_factory.mktemp("loud") / "loud_teacher.pth"
    torch.save(state, path)
    return str(path)


def _train(teacher, tmp_path, *opts):
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teacher, "OUTPUT_DIR", str(tmp_path),
                         "MODEL.DISTILL.METHODS", '["FITNET"]', "SOLVER.MAX_ITER", "8", *opts)
    seed_all_rng(0)
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return trainer


@pytest.mark.parametrize("norm, clip", [("none", "0.0"), ("teacher_rms", "0.0"), ("none", "35.0")])
def test_a_loud_teacher_trains_on_its_own_scale_or_with_the_clip(loud_teacher, tiny_shapes, tmp_path, norm, clip):
    """Raw features without the clip diverge within 8 iterations; either safeguard alone trains."""
    opts = ("MODEL.DISTILL.FEATURE_NORM", norm, "MODEL.DISTILL.MAX_GRAD_NORM", clip)
    if (norm, clip) == ("none", "0.0"):
        with pytest.raises(FloatingPointError, match="non-finite"):
            _train(loud_teacher, tmp_path, *opts)
        return
    trainer = _train(loud_teacher, tmp_path, *opts)
    assert trainer.iter == 8
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
