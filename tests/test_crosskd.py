"""CrossKD: the student's features through the teacher's head, on real quickstart detectors."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from test_teacher_student import ATSS_TEACHER_CFG, FCOS_STUDENT, batch, teacher_snapshot, tid_cfg
from tid_d2.modeling.teacher_student import check_compatible
from tid_d2.distill.crosskd import CROSSKD, align_to_teacher, kd_quality_focal_loss

PAIRS = {
    "GFL->GFL": ("TID-GFL", "GFL-teacher", ()),
    "ATSS->ATSS": ("TID-ATSS", "ATSS-teacher", ()),
    "ATSS->FCOS": ("TID-GFL", "ATSS-teacher", ("MODEL.TEACHER.CONFIG_FILE", ATSS_TEACHER_CFG) + FCOS_STUDENT),
}


def crosskd_cfg(teachers, pair, methods="['CROSSKD']"):
    name, teacher, opts = PAIRS[pair]
    return tid_cfg(teachers, name, teacher, *opts, "MODEL.DISTILL.METHODS", methods)


def test_kd_quality_focal_loss_hand_values():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[0.5, 0.2]])
    p = logits.sigmoid()
    bce = -(target * p.log() + (1 - target) * (1 - p).log())
    assert torch.allclose(kd_quality_focal_loss(logits, target, beta=1.0), bce * (p - target).abs())
    assert kd_quality_focal_loss(logits, p, beta=1.0).abs().max() < 1e-7  # prediction = target


def test_align_to_teacher_gives_the_teacher_channel_statistics():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 4, 5, generator=g) * 7 + 3
    t = torch.randn(2, 3, 4, 5, generator=g) * torch.tensor([1.0, 5.0, 0.1])[None, :, None, None] - 2
    a = align_to_teacher(s, t)
    assert torch.allclose(a.mean(dim=(0, 2, 3)), t.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(a.std(dim=(0, 2, 3)), t.std(dim=(0, 2, 3)), atol=1e-4)
    one = align_to_teacher(torch.randn(1, 3, 1, 1), torch.randn(1, 3, 1, 1))  # a P7 map of one image
    assert torch.isfinite(one).all()


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_named_losses_and_gradients_only_into_the_student(pair, teachers, tiny_shapes):
    cfg = crosskd_cfg(teachers, pair)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert not any("_teacher" in k or "_student" in k or k.startswith("teacher") for k in model.state_dict())
    kd = model.distillers["crosskd"]
    assert kd.reg_adapter is not None and kd.reg_adapter is not kd.adapter  # one adapter per tower
    before = teacher_snapshot(model)
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    kd = {k: v for k, v in losses.items() if k.startswith("loss_crosskd")}
    want = {"loss_crosskd_cls", "loss_crosskd_box"}
    if pair == "GFL->GFL":
        want.add("loss_crosskd_dist")  # box distributions: GFL teacher and student only
    else:
        want.add("loss_crosskd_ctr")  # the cross head is the ATSS teacher's: it predicts centerness
    assert set(kd) == want
    assert all(torch.isfinite(v) and v > 0 for v in kd.values())
    sum(kd.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    backbone = [p.grad for p in model.student.backbone.parameters()]
    assert all(g is not None for g in backbone) and sum(float(g.abs().sum()) for g in backbone) > 0
    # the student's towers up to the reuse point (the teacher's last block: block 1 of 2 here) feed the
    # cross head; its later blocks and predictors take no part in CrossKD's loss
    cls_tower, reg_tower = model.student.head_tower_blocks()
    assert model.distillers["crosskd"].reuse_block == len(cls_tower) - 1 == 1
    for tower in (cls_tower, reg_tower):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower[0].parameters())
        assert all(p.grad is None for p in tower[1].parameters())
    assert all(p.grad is None for p in model.student.head.cls_score.parameters())
    after = teacher_snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("teacher_name", ["GFL-teacher", "ATSS-teacher"])
def test_zero_when_the_student_is_the_teacher(teacher_name, teachers, tiny_shapes):
    """Student features = teacher features: the cross head reproduces the teacher, every loss is ~0."""
    opts = ("MODEL.TEACHER.CONFIG_FILE", ATSS_TEACHER_CFG) if teacher_name == "ATSS-teacher" else ()
    cfg = tid_cfg(teachers, "TID-GFL", teacher_name, *opts, "MODEL.DISTILL.METHODS", "['CROSSKD']")
    model = build_model(cfg)
    teacher = model.teacher
    data = batch(cfg, tiny_shapes[0])
    targets = teacher.gt_instances(data)
    with torch.no_grad():
        t_out = teacher.dense_outputs(data, targets)
    for reuse in (-1, 0):  # from inside the towers (published) and from the FPN features
        kd = CROSSKD.from_defaults(check_compatible(teacher, teacher), reuse_block=reuse)
        kd.attach(teacher, teacher)
        losses = kd(t_out, t_out, targets)
        assert set(losses) >= {"loss_crosskd_cls", "loss_crosskd_box"}
        for k, v in losses.items():
            # the only non-zero part left: the BCE of a soft target against itself (its entropy)
            if k != "loss_crosskd_ctr":
                assert abs(float(v)) < 1e-5, (k, float(v))  # a 0.3-std feature noise gives > 1e-3


def test_combinations_train(teachers, tiny_shapes):
    for methods in ("['TID', 'CROSSKD']", "['TID', 'LD']"):
        cfg = crosskd_cfg(teachers, "GFL->GFL", methods)
        torch.manual_seed(0)
        model = build_model(cfg).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for _ in range(2):
            with EventStorage():
                losses = model(batch(cfg, tiny_shapes[0]))
            assert any(k.startswith("loss_tid_") for k in losses)
            assert all(torch.isfinite(v) for v in losses.values())
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()


def test_without_a_teacher_head_is_a_clear_error(teachers, tiny_shapes):
    cfg = crosskd_cfg(teachers, "GFL->GFL")
    model = build_model(cfg)
    data = batch(cfg, tiny_shapes[0])
    targets = model.teacher.gt_instances(data)
    with torch.no_grad():
        out = model.teacher.dense_outputs(data, targets)
    with pytest.raises(RuntimeError, match="TeacherStudent"):
        CROSSKD.from_defaults(check_compatible(model.teacher, model.teacher))(out, out, targets)
    with pytest.raises(ValueError, match=r"REUSE_BLOCK 5 \(block 5\) is outside the head towers.*0..2"):
        CROSSKD.from_defaults(check_compatible(model.teacher, model.teacher), reuse_block=5)


@pytest.mark.parametrize("key", ["CLS_WEIGHT", "BOX_WEIGHT", "DIST_WEIGHT"])
def test_negative_weights_are_named_errors(key, teachers):
    with pytest.raises(ValueError, match=f"MODEL.DISTILL.CROSSKD.{key}"):
        build_model(tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.METHODS", "['CROSSKD']",
                            f"MODEL.DISTILL.CROSSKD.{key}", "-1.0"))
