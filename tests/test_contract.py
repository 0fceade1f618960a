"""The detector contract and the layering: what distillers may import, Detectron2's RetinaNet as a
distillable detector, user overrides honoured when distilling, checked weight loads."""
import ast
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg
from tid_d2.structures import DistillLayout
from tid_d2.checkpoint import student_state_dict
from tid_d2.distill import build_distillers
from tid_d2.engine import TIDTrainer
from tid_d2.modeling import FCOS, GFL, DistillableRetinaNet
from tid_d2.modeling.retinanet import best_anchor_per_location, square_anchor_index
from tid_d2.modeling.teacher_student import TeacherStudent

PACKAGE = os.path.join(REPO, "tid_d2")
CORE = ("modeling", "distill", "engine", "data", "checkpoint", "structures")
HARNESS = ("benchmark", "analysis", "visualization")


def imported_modules(folder: str):
    """(file, absolute tid_d2 module) for every import in the .py files of tid_d2/<folder>."""
    out = []
    for name in sorted(os.listdir(os.path.join(PACKAGE, folder))):
        if not name.endswith(".py"):
            continue
        path = os.path.join(PACKAGE, folder, name)
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against tid_d2.<folder>
                    parts = ["tid_d2", folder][: 3 - node.level] if node.level <= 2 else []
                    base = ".".join(parts + ([base] if base else []))
                out += [(name, f"{base}.{a.name}" if not node.module else base) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(name, a.name) for a in node.names]
    return [(f, m) for f, m in out if m.startswith("tid_d2")]


def test_distill_imports_no_detector():
    bad = [(f, m) for f, m in imported_modules("distill") if m.startswith("tid_d2.modeling")]
    assert not bad, f"distillers must see detectors only through tid_d2.structures: {bad}"


@pytest.mark.parametrize("folder", CORE)
def test_core_imports_nothing_from_the_research_harness(folder):
    bad = [(f, m) for f, m in imported_modules(folder) if m.split(".")[1:2] and m.split(".")[1] in HARNESS]
    assert not bad, bad


# ----- RetinaNet: 9 anchors per location -> per-location outputs --------------------------------
def retinanet(role="student", *opts):
    cfg = quickstart_cfg(f"RetinaNet-{role}", *opts)
    torch.manual_seed(0)
    return build_model(cfg).train(), cfg


def test_best_anchor_per_location_and_square_anchor():
    logits = torch.tensor([[[0.0, 1.0], [3.0, -1.0], [0.5, 0.5], [-2.0, -3.0], [-1.0, 4.0], [0.0, 0.0]]])
    assert best_anchor_per_location(logits, 3).tolist() == [[[1], [1]]]  # 2 locations x 3 anchors
    cell = torch.tensor([[-8.0, -4, 8, 4], [-6.0, -6, 6, 6], [-4.0, -8, 4, 8], [-9.0, -9, 9, 9]])
    assert square_anchor_index(cell) == 1  # the smaller of the two squares


def test_retinanet_dense_outputs_pick_each_locations_most_confident_anchor(tiny_shapes):
    from test_teacher_student import batch

    model, cfg = retinanet()
    data = batch(cfg, tiny_shapes[0])
    with EventStorage():
        losses, out = model.forward_distill(data)
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    images = model.preprocess_image(data)
    features = model.extract_features(images)
    logits, deltas = model._transpose_dense_predictions(model.head(features), [6, 4])
    anchors = model.anchor_generator(features)
    a = model.num_anchors
    assert a == 9 and out.strides == [8, 16, 32, 64, 128]
    for lvl in (0, 3):
        n, ra, _ = logits[lvl].shape
        per_loc = logits[lvl].reshape(n, ra // a, a, 6)
        for i in range(n):
            for p in range(0, ra // a, 7):  # a sample of locations, checked one by one
                best = int(per_loc[i, p].max(dim=1).values.argmax())
                assert torch.equal(out.cls_logits[lvl][i, p], per_loc[i, p, best])
                box = model.box2box_transform.apply_deltas(
                    deltas[lvl][i, p * a + best][None], anchors[lvl].tensor[p * a + best][None]
                )[0]
                assert torch.allclose(out.boxes[lvl][i, p], box, atol=1e-4)
        square = anchors[lvl].tensor.reshape(-1, a, 4)[:, model.square_anchor]
        assert torch.equal(out.anchors[lvl], square)
        wh = square[:, 2:] - square[:, :2]
        assert torch.allclose(wh[:, 0], wh[:, 1])
    gt_labels, _ = model.label_anchors(anchors, model.gt_instances(data))
    fg = torch.stack([(g >= 0) & (g < 6) for g in gt_labels])
    want = fg.reshape(len(data), -1, a).any(dim=-1)
    assert torch.equal(out.extras["pos_mask"], want) and want.any()
    assert out.pos_thresholds is None and out.box_logits is None


@pytest.mark.parametrize("method", ["TID", "FITNET", "FGD", "PKD", "CWD"])
def test_retinanet_distills_with_every_feature_method(method, tiny_shapes, tmp_path):
    from test_teacher_student import batch

    teacher, _ = retinanet("teacher")
    DetectionCheckpointer(teacher, save_dir=str(tmp_path)).save("teacher")
    cfg = quickstart_cfg(
        "TID-RetinaNet",
        "MODEL.TEACHER.WEIGHTS", str(tmp_path / "teacher.pth"),
        "MODEL.DISTILL.METHODS", f"['{method}']",
    )
    model = build_model(cfg).train()
    assert isinstance(model.student, DistillableRetinaNet)
    if method == "FGD":  # one adapter and two context modules per level of the pair, no config guess
        assert len(model.distillers["fgd"].adapters) == len(model.student.strides) == 5
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    ours = [k for k in losses if k.startswith(f"loss_{method.lower()}")]
    assert ours and {"loss_cls", "loss_box_reg"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = [p.grad for p in model.student.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


# ----- the detector's own training path is the one distilled -------------------------------------
class MarkedGFL(GFL):
    """A user's GFL whose `losses` adds a term: distillation must train it too."""

    def losses(self, *args, **kwargs):
        out = super().losses(*args, **kwargs)
        out["loss_user"] = out["loss_gfl_cls"] * 0 + 7.0
        return out


class MarkedFCOS(FCOS):
    def forward_training(self, images, features, predictions, gt_instances):
        out = super().forward_training(images, features, predictions, gt_instances)
        return {**out, "loss_user": sum(out.values()) * 0 + 3.0}


@pytest.mark.parametrize("cls, name, value", [(MarkedGFL, "GFL", 7.0), (MarkedFCOS, "FCOS", 3.0)])
def test_user_overrides_are_used_when_distilling(cls, name, value, teachers, tiny_shapes):
    from test_teacher_student import batch

    opts = ("MODEL.FCOS.NUM_CLASSES", "6", "MODEL.FCOS.NUM_CONVS", "2") if name == "FCOS" else ()
    student_cfg = quickstart_cfg("GFL-student", "MODEL.META_ARCHITECTURE", name, *opts)
    student = cls(student_cfg).train()
    teacher = build_model(quickstart_cfg("GFL-teacher"))
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"])
    model = TeacherStudent(
        student=student, teacher=teacher, distillers=build_distillers(cfg.MODEL.DISTILL, DistillLayout(64, 32))
    ).train()
    with EventStorage():
        losses = model(batch(student_cfg, tiny_shapes[0]))
    assert losses["loss_user"].item() == value
    assert "loss_tid_key" in losses


def test_labels_are_computed_once_per_distillation_step(teachers, tiny_shapes, monkeypatch):
    from test_teacher_student import batch

    cfg = quickstart_cfg("GFL-student")
    model = build_model(cfg).train()
    calls = []
    original = type(model).label_anchors
    monkeypatch.setattr(type(model), "label_anchors", lambda self, *a: calls.append(1) or original(self, *a))
    with EventStorage():
        model.forward_distill(batch(cfg, tiny_shapes[0]))
    assert len(calls) == 1
    assert "label_anchors" not in vars(model)  # the memo is gone after the step


# ----- every weight load goes through the checked loader ------------------------------------------
def teacher_student_checkpoint(teachers, tmp_path):
    """A TeacherStudent checkpoint (as a TID run writes it) whose student differs from a fresh one."""
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"])
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(0.5)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("earlier_run")
    return str(tmp_path / "earlier_run.pth")


@pytest.mark.parametrize("config", ["TID-GFL", "GFL-student"])
def test_teacher_student_checkpoint_in_model_weights_initializes_the_student(
    config, teachers, tiny_shapes, tmp_path
):
    path = teacher_student_checkpoint(teachers, tmp_path)
    cfg = quickstart_cfg(
        config, "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"], "MODEL.WEIGHTS", path,
        "OUTPUT_DIR", str(tmp_path / "out"),
    )
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model
    student = model.student if isinstance(model, TeacherStudent) else model
    expected = student_state_dict(torch.load(path, weights_only=False)["model"])
    got = student.state_dict()
    assert set(expected) == set(got)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_a_weights_file_that_fits_nothing_is_an_error_naming_it(teachers, tiny_shapes, tmp_path):
    cfg = quickstart_cfg(
        "TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"],
        "MODEL.WEIGHTS", teachers["GFL-teacher"],  # the teacher's (wider) weights for the student
        "OUTPUT_DIR", str(tmp_path),
    )
    trainer = TIDTrainer(cfg)
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS=.*GFL-teacher.pth does not fit.*backbone"):
        trainer.resume_or_load(resume=False)


def test_teacher_and_student_each_get_their_own_channel_order(teachers, tiny_shapes):
    """An RGB teacher (e.g. converted from mmdetection) distils into a BGR student and the reverse."""
    from test_teacher_student import batch

    for teacher_fmt, student_fmt in (("RGB", "BGR"), ("BGR", "RGB")):
        cfg = quickstart_cfg(
            "TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"], "INPUT.FORMAT", student_fmt,
            "MODEL.TEACHER.OPTS", f"['INPUT.FORMAT', '{teacher_fmt}']",
        )
        model = build_model(cfg).train()
        assert (model.teacher.input_format, model.student.input_format) == (teacher_fmt, student_fmt)
        data = batch(cfg, tiny_shapes[0])
        seen = []
        original = model.teacher.dense_outputs
        model.teacher.dense_outputs = lambda inputs, gt: seen.append(inputs) or original(inputs, gt)
        with EventStorage():
            losses = model(data)
        assert all(torch.isfinite(v) for v in losses.values())
        for x, t in zip(data, seen[0]):
            assert torch.equal(t["image"], x["image"].flip(0))
            assert t["instances"] is x["instances"]
    same = build_model(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"]))
    data = batch(cfg, tiny_shapes[0])
    assert same.teacher_inputs(data) is data  # the same format: no copy
