"""MODEL.DISTILL.INHERIT: the student starts from the teacher's trained neck (and head)."""
import pytest
import torch
from detectron2.modeling import build_model

from test_teacher_student import tid_cfg

#: a quickstart student whose FPN fits the teacher's: the teacher's widths, half its depth
SAME_WIDTHS = ("MODEL.TINY_RESNET.WIDTHS", "[32, 64, 128, 256]", "MODEL.TINY_RESNET.STEM_WIDTH", "32",
               "MODEL.FPN.OUT_CHANNELS", "64")


def _neck(model):
    return {k: v for k, v in model.backbone.state_dict().items() if not k.startswith("bottom_up.")}


@pytest.mark.parametrize("mode", ["none", "neck", "neck+head"])
def test_inherit_copies_exactly_the_named_parts(mode, teachers):
    torch.manual_seed(0)
    model = build_model(tid_cfg(teachers, "TID-GFL", "GFL-teacher", *SAME_WIDTHS, "MODEL.DISTILL.INHERIT", mode))
    s, t = model.student, model.teacher
    same_neck = all(torch.equal(v, _neck(t)[k]) for k, v in _neck(s).items())
    same_head = all(torch.equal(v, t.head.state_dict()[k]) for k, v in s.head.state_dict().items())
    assert same_neck == (mode != "none")
    assert same_head == (mode == "neck+head")
    # the bottom-up network is never inherited (depths differ) and the copies are not shared tensors
    assert s.backbone.bottom_up.state_dict().keys() != t.backbone.bottom_up.state_dict().keys()
    if mode != "none":
        key = next(iter(_neck(s)))
        assert _neck(s)[key].data_ptr() != _neck(t)[key].data_ptr()


def test_inherit_with_different_widths_names_the_mismatch(teachers):
    with pytest.raises(ValueError, match=r"INHERIT=neck: the teacher's neck does not fit.*OUT_CHANNELS"):
        build_model(tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.INHERIT", "neck"))


def test_inherit_head_with_other_classes_is_an_error(teachers):
    opts = SAME_WIDTHS + ("MODEL.DISTILL.INHERIT", "neck+head")
    with pytest.raises(ValueError, match="classes"):
        build_model(tid_cfg(teachers, "TID-GFL", "GFL-teacher-5cls", *opts))


def test_unknown_inherit_mode_is_an_error(teachers):
    with pytest.raises(ValueError, match="MODEL.DISTILL.INHERIT must be one of"):
        build_model(tid_cfg(teachers, "TID-GFL", "GFL-teacher", *SAME_WIDTHS, "MODEL.DISTILL.INHERIT", "all"))
