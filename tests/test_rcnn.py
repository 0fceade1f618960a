"""Two-stage students: Detectron2's Faster / Mask R-CNN behind the distiller contract (tid_d2/modeling/rcnn.py),
from both config systems, through training, evaluation (box and mask AP), export, resume and the tools."""
import copy
import math
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import pairwise_iou
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from conftest import REPO, TINY_VAL, quickstart_cfg
from test_export import _load_script, export_tool, train_net
from test_lazy_config import LAZY, assert_same_model
from test_teacher_student import batch
from tid_d2.benchmark.accuracy import not_applicable_reason, parse_method
from tid_d2.distill import distillers_builder
from tid_d2.distill.tid import diem_scores
from tid_d2.engine import TIDTrainer
from tid_d2.modeling import DistillableRCNN
from tid_d2.modeling.teacher_student import TeacherStudent

ARCHS = ("FasterRCNN", "MaskRCNN")
APPLICABLE = ("TID", "FITNET", "FGD", "PKD", "CWD")
# a random student detects nothing at the default 0.05
LOW_THRESH = ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")


def rcnn(arch="FasterRCNN", role="student", *opts):
    cfg = quickstart_cfg(f"{arch}-{role}", *opts)
    torch.manual_seed(0)
    return build_model(cfg).train(), cfg


@pytest.fixture(scope="module")
def rcnn_teachers(tiny_shapes, tmp_path_factory):
    """Randomly initialised quickstart R-CNN teachers, saved: arch -> path."""
    out = tmp_path_factory.mktemp("rcnn_teachers")
    paths = {}
    for arch in ARCHS:
        torch.manual_seed(1)
        DetectionCheckpointer(build_model(quickstart_cfg(f"{arch}-teacher")), save_dir=str(out)).save(arch)
        paths[arch] = str(out / f"{arch}.pth")
    return paths


def distill_cfg(arch, teacher, *opts):
    return quickstart_cfg(f"TID-{arch}", "MODEL.TEACHER.WEIGHTS", teacher, *opts)


# ----- the contract ---------------------------------------------------------------------------------
def test_dense_outputs_are_the_rpns_predictions_location_by_location(tiny_shapes):
    """Per location: the objectness and decoded proposal of its most confident anchor, its square
    anchor; positives are the RPN matcher's (before sampling); every GT's threshold is the matcher's 0.7."""
    model, cfg = rcnn()
    data = batch(cfg, tiny_shapes[0])
    with EventStorage():
        losses, out = model.forward_distill(data)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    images = model.preprocess_image(data)
    features = model.extract_features(images)
    objectness, deltas = model.proposal_generator.rpn_head(features)
    anchors = model.anchor_generator(features)
    a = model.num_anchors
    assert a == 3 and out.strides == [4, 8, 16, 32, 64] and out.num_classes == 1
    assert model.num_classes == 6 and not model.has_dense_class_head
    transform = model.proposal_generator.box2box_transform
    for lvl in (0, 3):
        n, _, h, w = objectness[lvl].shape
        for i in range(n):
            for p in range(0, h * w, 7):  # a sample of locations, checked one by one
                y, x = divmod(p, w)
                scores = objectness[lvl][i, :, y, x]
                best = int(scores.argmax())
                assert torch.allclose(out.cls_logits[lvl][i, p, 0], scores[best])
                d = deltas[lvl][i].view(a, 4, h, w)[best, :, y, x]
                box = transform.apply_deltas(d[None], anchors[lvl].tensor[p * a + best][None])[0]
                assert torch.allclose(out.boxes[lvl][i, p], box, atol=1e-4)
        square = anchors[lvl].tensor.reshape(-1, a, 4)[:, model.square_anchor]
        assert torch.equal(out.anchors[lvl], square)
        wh = square[:, 2:] - square[:, :2]
        assert torch.allclose(wh[:, 0], wh[:, 1])
    flat = torch.cat([x.tensor for x in anchors])
    matcher = model.proposal_generator.anchor_matcher
    gts = model.gt_instances(data)
    want = torch.stack([matcher(pairwise_iou(g.gt_boxes, type(anchors[0])(flat)))[1] == 1 for g in gts])
    assert torch.equal(out.extras["pos_mask"], want.reshape(len(data), -1, a).any(dim=-1)) and want.any()
    assert [len(t) for t in out.pos_thresholds] == [len(g) for g in gts]
    assert all(torch.all(t == torch.tensor(0.7)) for t in out.pos_thresholds)


def test_distilling_trains_the_detector_as_detectron2_does_and_reading_positives_draws_nothing(tiny_shapes):
    """forward_distill's losses are the plain training forward's (same random draws for the RPN's and the
    ROI heads' sampling); building DenseOutputs with GT leaves the random state untouched."""
    model, cfg = rcnn("MaskRCNN")
    data = batch(cfg, tiny_shapes[0])
    with EventStorage():
        torch.manual_seed(3)
        plain = model(data)
        torch.manual_seed(3)
        losses, out = model.forward_distill(data)
        state = torch.get_rng_state()
        model.dense_outputs(data, model.gt_instances(data))
        assert torch.equal(state, torch.get_rng_state())
    assert "loss_mask" in losses and set(plain) == set(losses)
    assert all(torch.equal(plain[k], losses[k]) for k in plain)


class MarkedRCNN(DistillableRCNN):
    """A user's R-CNN whose training forward adds a term: distillation must train it too."""

    def forward(self, batched_inputs):
        out = super().forward(batched_inputs)
        return {**out, "loss_user": sum(out.values()) * 0 + 5.0} if self.training else out


def test_a_users_forward_is_the_one_distilled(rcnn_teachers, tiny_shapes):
    cfg = distill_cfg("FasterRCNN", rcnn_teachers["FasterRCNN"])
    ts = build_model(cfg)
    model = TeacherStudent(
        student=MarkedRCNN(quickstart_cfg("FasterRCNN-student")), teacher=ts.teacher,
        distillers=distillers_builder(["TID"]),
    ).train()
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    assert losses["loss_user"].item() == 5.0 and "loss_tid_other" in losses


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", APPLICABLE)
def test_every_applicable_method_distils_a_two_stage_student(arch, method, rcnn_teachers, tiny_shapes):
    cfg = distill_cfg(arch, rcnn_teachers[arch], "MODEL.DISTILL.METHODS", f"['{method}']")
    model = build_model(cfg).train()
    assert isinstance(model.student, DistillableRCNN)
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    ours = [k for k in losses if k.startswith(f"loss_{method.lower()}")]
    heads = {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"} | ({"loss_mask"} if arch == "MaskRCNN" else set())
    assert ours and heads <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = [p.grad for p in model.student.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("method", ["LD", "PGD", "CROSSKD"])
def test_methods_needing_a_dense_class_head_fail_at_build_time(method, rcnn_teachers):
    cfg = distill_cfg("FasterRCNN", rcnn_teachers["FasterRCNN"], "MODEL.DISTILL.METHODS", f"['{method}']")
    with pytest.raises(ValueError, match=f"'{method.lower()}' needs a dense classification head.*class-agnostic RPN"):
        build_model(cfg)
    ts = build_model(distill_cfg("FasterRCNN", rcnn_teachers["FasterRCNN"]))
    with pytest.raises(ValueError, match="dense classification head"):  # the LazyConfig builder too
        TeacherStudent(student=ts.student, teacher=ts.teacher, distillers=distillers_builder([method]))
    why = not_applicable_reason(parse_method(method.lower()), "FasterRCNN")
    assert why and "class-agnostic RPN" in why
    assert not_applicable_reason(parse_method("tid"), "MaskRCNN") is None


def test_tid_grades_an_objectness_as_class_agnostic():
    """With one logit (an RPN's objectness) a confident prediction on an object is of the right class
    whatever the object's class: Score_c is hi, where a K-class head of the wrong class scores lo."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [50.0, 50, 60, 60]]])
    gt = dict(gt_boxes=torch.tensor([[[0.0, 0, 10, 10]]]), gt_classes=torch.tensor([[4]]),
              gt_valid=torch.tensor([[True]]), thr_pos=torch.tensor([[0.7]]))
    args = dict(thr_neg=0.3, levels=(2.0, 1.5, 0.4), tau=0.5, tau_bg=0.2)
    objectness = torch.tensor([[[5.0], [-5.0]]])
    _, _, score_c, _, _ = diem_scores(boxes, objectness, **gt, **args)
    assert score_c.tolist() == [[2.0, 2.0]]  # object: right and confident; background: clean
    wrong = torch.full((1, 2, 6), -5.0)
    wrong[0, 0, 1] = 5.0  # confident, class 1 on a class-4 object
    _, _, score_c, _, _ = diem_scores(boxes, wrong, **gt, **args)
    assert score_c[0, 0].item() == pytest.approx(0.4)


def test_inheriting_copies_the_rpn_and_the_roi_heads(rcnn_teachers):
    student, _ = rcnn("FasterRCNN", "teacher")  # the same widths as the teacher: it can inherit
    cfg = distill_cfg("FasterRCNN", rcnn_teachers["FasterRCNN"])
    teacher = build_model(cfg).teacher
    TeacherStudent(student=student, teacher=teacher, distillers=distillers_builder(["FITNET"]), inherit="neck+head")
    t, s = teacher.state_dict(), student.state_dict()
    copied = [k for k in t if k.startswith(("proposal_generator.", "roi_heads.", "backbone.fpn"))]
    assert copied and all(torch.equal(t[k], s[k]) for k in copied)
    assert not torch.equal(t["backbone.bottom_up.stem.conv1.weight"], s["backbone.bottom_up.stem.conv1.weight"])


def test_a_dense_teacher_checkpoint_for_a_two_stage_teacher_is_an_error_naming_it(teachers):
    cfg = distill_cfg("FasterRCNN", teachers["GFL-teacher"])
    with pytest.raises(ValueError, match="GFL-teacher.pth"):
        build_model(cfg)


# ----- LazyConfig -----------------------------------------------------------------------------------
@pytest.mark.parametrize("yaml_name, lazy_name", [
    ("FasterRCNN-student", "quickstart/faster_rcnn_student.py"),
    ("FasterRCNN-teacher", "quickstart/faster_rcnn_teacher.py"),
    ("MaskRCNN-student", "quickstart/mask_rcnn_student.py"),
    ("MaskRCNN-teacher", "quickstart/mask_rcnn_teacher.py"),
])
def test_yaml_and_lazy_build_the_same_two_stage_model(yaml_name, lazy_name):
    yaml_model = build_model(quickstart_cfg(yaml_name))
    lazy = LazyConfig.load(os.path.join(LAZY, lazy_name))
    assert_same_model(yaml_model, instantiate(lazy.model))
    assert lazy.optimizer.lr == quickstart_cfg(yaml_name).SOLVER.BASE_LR
    assert lazy.train.clip_gradients == {"clip_type": "norm", "clip_value": 10.0}
    if yaml_name.startswith("Mask"):
        assert lazy.dataloader.train.mapper.use_instance_mask
        assert lazy.dataloader.train.mapper.instance_mask_format == "bitmask"


def test_lazy_tid_mask_rcnn_trains_a_step(rcnn_teachers, tiny_shapes):
    lazy = LazyConfig.load(os.path.join(LAZY, "quickstart/tid_mask_rcnn.py"))
    lazy.model.teacher.weights = rcnn_teachers["MaskRCNN"]
    model = instantiate(lazy.model).train()
    cfg = quickstart_cfg("TID-MaskRCNN", "MODEL.TEACHER.WEIGHTS", rcnn_teachers["MaskRCNN"])
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    assert {"loss_mask", "loss_tid_key", "loss_rpn_cls"} <= set(losses)


# ----- training, evaluation, export, resume ---------------------------------------------------------
@pytest.fixture(scope="module")
def trained_mask_rcnn(rcnn_teachers, tmp_path_factory):
    """(TID-MaskRCNN cfg, its 2-iteration training checkpoint)."""
    out = tmp_path_factory.mktemp("tid_mask_rcnn")
    cfg = distill_cfg("MaskRCNN", rcnn_teachers["MaskRCNN"], "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "2",
                      "DATASETS.TEST", "()", *LOW_THRESH)
    seed_all_rng(0)
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, str(out / "model_final.pth")


def _detections(model, cfg, dataset):
    mapper = DatasetMapper(cfg, is_train=False)
    data = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(dataset)[:3]]
    model.eval()
    with torch.no_grad():
        return [r["instances"] for r in model(data)]


def test_export_and_eval_only_give_the_students_boxes_masks_and_mask_ap(trained_mask_rcnn, tiny_shapes, tmp_path):
    cfg, ckpt = trained_mask_rcnn
    exported = str(tmp_path / "student.pth")
    config = os.path.join(REPO, "configs", "quickstart", "TID-MaskRCNN.yaml")
    export_tool.main(["--config-file", config, "--weights", ckpt, "--output", exported])
    plain_cfg = quickstart_cfg("MaskRCNN-student", *LOW_THRESH)
    plain = build_model(plain_cfg)
    DetectionCheckpointer(plain).load(exported)
    distilled = build_model(cfg)
    DetectionCheckpointer(distilled).load(ckpt)
    got, want = _detections(distilled, cfg, tiny_shapes[1]), _detections(plain, plain_cfg, tiny_shapes[1])
    assert sum(len(x) for x in want) > 0
    for g, w in zip(got, want):
        assert torch.equal(g.pred_boxes.tensor, w.pred_boxes.tensor) and torch.equal(g.pred_masks, w.pred_masks)

    args = default_argument_parser().parse_args([
        "--config-file", config, "--eval-only", "OUTPUT_DIR", str(tmp_path / "eval"),
        "DATASETS.TEST", f"('{TINY_VAL}',)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ckpt, "MODEL.TEACHER.WEIGHTS", "/nonexistent/teacher.pth",
        *LOW_THRESH,
    ])
    results = train_net.main(args)
    assert set(results) == {"bbox", "segm"}
    assert not math.isnan(results["bbox"]["AP"]) and not math.isnan(results["segm"]["AP"])


def test_resume_gives_the_weights_of_an_uninterrupted_two_stage_run(rcnn_teachers, tmp_path):
    from test_resume_ddp import Interrupted, _final_state, _train

    opts = ["SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "2", "DATASETS.TEST", "()",
            "SOLVER.MAX_ITER", "4", "DATALOADER.NUM_WORKERS", "0"]
    full = _train(distill_cfg("MaskRCNN", rcnn_teachers["MaskRCNN"], *opts, "OUTPUT_DIR", str(tmp_path / "full")))
    cfg = distill_cfg("MaskRCNN", rcnn_teachers["MaskRCNN"], *opts, "OUTPUT_DIR", str(tmp_path / "resumed"))
    with pytest.raises(Interrupted):
        _train(cfg, interrupt_at=1)
    resumed = _train(cfg, resume=True)
    want, got = _final_state(full), _final_state(resumed)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_visualize_areas_on_a_two_stage_pair(rcnn_teachers, tiny_shapes, tmp_path):
    vis = _load_script("tools/visualize_areas.py", "visualize_areas_rcnn")
    image = DatasetCatalog.get(tiny_shapes[1])[0]["file_name"]
    summary = vis.main([
        "--config-file", os.path.join(REPO, "configs", "quickstart", "TID-FasterRCNN.yaml"),
        "--input", image, "--output", str(tmp_path / "areas"),
        "--opts", "MODEL.TEACHER.WEIGHTS", rcnn_teachers["FasterRCNN"], "MODEL.DEVICE", "cpu",
        "DATASETS.TEST", f"('{tiny_shapes[1]}',)", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192",
    ])
    assert list(summary[image]["fractions"]) == ["p2", "p3", "p4", "p5", "p6"]
    assert summary[image]["num_gt"] > 0 and all(os.path.isfile(f) for f in summary[image]["files"])


def test_ddp_two_cpu_processes_distil_a_mask_rcnn(rcnn_teachers, tmp_path):
    """train_net.py with 2 GLOO processes: box, mask, RPN and TID losses, a student-only checkpoint. (Losses
    are not compared with one process: each process samples its own anchors and proposals.)"""
    import json
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = dict(os.environ, TID_TINY_ROOT=str(tmp_path / "datasets"), TID_TINY_SIDES="128,128", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, os.path.join(REPO, "tests", "_train_tiny.py"), "--num-gpus", "2", "--dist-url", "auto",
        "--config-file", os.path.join(REPO, "configs", "quickstart", "TID-MaskRCNN.yaml"),
        "MODEL.TEACHER.WEIGHTS", rcnn_teachers["MaskRCNN"], "OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.MAX_ITER", "2", "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = [json.loads(line) for line in open(out / "metrics.json") if "total_loss" in line][-1]
    assert {"loss_mask", "loss_rpn_cls", "loss_tid_other"} <= set(last) and math.isfinite(last["total_loss"])
    ckpt = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert not any(k.startswith(("teacher", "module.")) for k in ckpt["model"])
    assert "student.roi_heads.mask_head.predictor.weight" in ckpt["model"]


def test_mask_training_on_instances_without_masks_is_an_error_naming_the_dataset(tiny_shapes):
    from detectron2.data import MetadataCatalog

    name = "tid_shapes_tiny_train_no_masks"
    if name not in DatasetCatalog:
        dicts = [dict(d, annotations=[{k: v for k, v in a.items() if k != "segmentation"} for a in d["annotations"]])
                 for d in DatasetCatalog.get(tiny_shapes[0])]
        DatasetCatalog.register(name, lambda: copy.deepcopy(dicts))
        MetadataCatalog.get(name).set(json_file="no_masks.json", thing_classes=MetadataCatalog.get(tiny_shapes[0]).thing_classes)
    masked = quickstart_cfg("MaskRCNN-student", "DATASETS.TRAIN", f"('{name}',)")
    with pytest.raises(ValueError, match=r"'tid_shapes_tiny_train_no_masks' \(json: no_masks.json\): \d+ of its \d+ instances have no 'segmentation'.*MODEL.MASK_ON False"):
        TIDTrainer.build_train_loader(masked)
    TIDTrainer.build_train_loader(quickstart_cfg("FasterRCNN-student", "DATASETS.TRAIN", f"('{name}',)"))


def test_the_cost_batch_of_a_mask_rcnn_carries_masks(tiny_shapes):
    from tid_d2.benchmark.cost import fixed_batch

    masked = fixed_batch(quickstart_cfg("MaskRCNN-student"), 2)
    assert all(b["instances"].has("gt_masks") and len(b["instances"].gt_masks) for b in masked)
    assert not fixed_batch(quickstart_cfg("FasterRCNN-student"), 2)[0]["instances"].has("gt_masks")
