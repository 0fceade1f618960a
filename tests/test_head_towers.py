"""The head-tower part of the detector contract (`head_towers`, `head_outputs_from_towers`) and PGD's
published form on it: each branch imitates its tower's first block."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import quickstart_cfg
from test_teacher_student import batch
from tid_d2.distill.pgd import PGD
from tid_d2.modeling.teacher_student import check_compatible

STUDENTS = {
    "GFL": ("GFL-student", ()),
    "ATSS": ("ATSS-student", ()),
    "FCOS": ("GFL-student", ("MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FCOS.NUM_CLASSES", "6")),
    "RetinaNet": ("RetinaNet-student", ()),  # towers without norm: conv + ReLU blocks
}


def student(name):
    cfg_name, opts = STUDENTS[name]
    torch.manual_seed(0)
    cfg = quickstart_cfg(cfg_name, *opts)
    return build_model(cfg).eval(), cfg


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_towers_block_by_block_equal_the_heads_own(name, tiny_shapes):
    model, cfg = student(name)
    images = model.preprocess_image(batch(cfg, tiny_shapes[0]))
    feats = model.extract_features(images)
    blocks = model.tower_blocks
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.head.cls_subnet)
    assert blocks == convs > 0 and model.tower_channels == feats[0].shape[1]
    with torch.no_grad():
        cls_all, reg_all = model.head_towers(feats, blocks)
        for f, c, r in zip(feats, cls_all, reg_all):
            assert torch.equal(c, model.head.cls_subnet(f)) and torch.equal(r, model.head.bbox_subnet(f))
        pre, _ = model.head_towers(feats, 1, activation=False)
        post, _ = model.head_towers(feats, 1)
        assert (pre[0] < 0).any() and torch.equal(post[0], pre[0].relu())
        whole = model.head_outputs(feats, images.image_sizes)
        for k in range(blocks + 1):
            cls_in, reg_in = model.head_towers(feats, k) if k else (feats, feats)
            out = model.head_outputs_from_towers(cls_in, reg_in, k, feats, images.image_sizes)
            for a, b in zip(out.cls_logits + out.boxes, whole.cls_logits + whole.boxes):
                assert torch.allclose(a, b, atol=1e-6), k
    with pytest.raises(ValueError, match="asked for 9"):
        model.head_towers(feats, 9)


def test_pgd_head_form_imitates_each_branchs_first_tower_block(tiny_shapes):
    """FEATURES head = the FPN form applied to the tower outputs: the classification terms on the
    classification tower's first block, the regression terms on the regression tower's."""
    model, cfg = student("GFL")
    teacher = copy.deepcopy(model)
    torch.manual_seed(3)
    for p in model.parameters():  # a different student of the same layout
        p.data.add_(0.05 * torch.randn_like(p))
    data = batch(cfg, tiny_shapes[0])
    targets = model.gt_instances(data)
    with torch.no_grad():
        t_out = teacher.dense_outputs(data, targets)
    s_out = model.dense_outputs(data, targets)
    layout = check_compatible(teacher, model)
    head = PGD.from_defaults(layout)
    head.attach(teacher, model)
    fpn = PGD.from_defaults(layout, features="fpn")
    assert head.features == "head" and isinstance(head.reg_adapter, torch.nn.Identity)
    losses = head(t_out, s_out, targets)
    with torch.no_grad():
        t_towers = teacher.head_towers(t_out.features, 1)
    s_towers = model.head_towers(s_out.features, 1)
    for branch, (t_feats, s_feats) in zip(("cls", "reg"), zip(t_towers, s_towers)):
        t_sub, s_sub = copy.copy(t_out), copy.copy(s_out)
        t_sub.features, s_sub.features = t_feats, s_feats
        ref = fpn(t_sub, s_sub, targets)[f"loss_pgd_{branch}"]
        assert losses[f"loss_pgd_{branch}"].item() == pytest.approx(ref.item(), rel=1e-5)
    losses["loss_pgd_cls"].backward()
    first = model.head_tower_blocks()[0][0][0]
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())  # the teacher's towers ran without grad


def test_pgd_head_form_needs_towers_and_levels(teachers):
    layout = check_compatible(*(student("GFL")[0],) * 2)
    no_towers = type(layout)(8, 8, strides=layout.strides)
    with pytest.raises(ValueError, match="FEATURES 'head'.*has none"):
        PGD.from_defaults(no_towers)
    with pytest.raises(ValueError, match="LEVEL_WEIGHTS has 2 entries for 5"):
        PGD.from_defaults(layout, level_weights=[1.0, 1.0])
    with EventStorage():
        model = build_model(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"],
                                           "MODEL.DISTILL.METHODS", "['PGD']"))
    pgd = model.distillers["pgd"]
    assert pgd.features == "head" and isinstance(pgd.adapter, torch.nn.Conv2d)  # towers 32 -> 64
    assert (pgd.adapter.in_channels, pgd.adapter.out_channels) == (32, 64)
    assert isinstance(pgd.reg_adapter, torch.nn.Conv2d) and pgd.reg_adapter is not pgd.adapter
    assert not any("_student" in k or "_teacher" in k for k in model.state_dict())
