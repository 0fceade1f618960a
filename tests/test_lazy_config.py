"""LazyConfigs (configs/lazy): the models and recipes of the YAML configs; lazy_train_net.py."""
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
from omegaconf import ListConfig

from detectron2.config import LazyConfig, instantiate
from detectron2.data import MetadataCatalog
from detectron2.data.detection_utils import build_augmentation
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg
from tid_d2.structures import DistillLayout
from tid_d2.modeling import ATSS, GFL, DistillableRCNN
from tid_d2.engine.defaults import setup_cfg

LAZY = os.path.join(REPO, "configs", "lazy")
#: (YAML config, LazyConfig) pairs that must describe the same model and training recipe
QUICKSTART_PAIRS = [
    ("GFL-student", "quickstart/gfl_student.py"),
    ("GFL-teacher", "quickstart/gfl_teacher.py"),
]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one intra-op thread is as fast alone, and far faster on a shared CPU."""
    torch.set_num_threads(1)


def load_lazy(name: str):
    return LazyConfig.load(os.path.join(LAZY, name))


def structure(model):
    """(module names and reprs, parameter/buffer names, shapes and requires_grad)."""
    modules = [
        (n, type(m).__name__ if list(m.children()) else repr(m)) for n, m in model.named_modules()
    ]
    params = [(n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters()]
    buffers = [(n, tuple(b.shape)) for n, b in model.named_buffers()]
    return modules, params, buffers


HYPERPARAMETERS = (
    "num_classes", "strides", "head_in_features", "atss_topk", "test_score_thresh",
    "test_topk_candidates", "test_nms_thresh", "max_detections_per_image", "input_format",
    "reg_max", "qfl_beta", "loss_cls_weight", "loss_dfl_weight", "loss_box_weight",
    "focal_loss_alpha", "focal_loss_gamma", "loss_centerness_weight", "test_clip_boxes",
    "ignore_batch_padding", "test_score_mode",
)


def assert_same_model(yaml_model, lazy_model):
    assert type(yaml_model) is type(lazy_model)
    ys, ls = structure(yaml_model), structure(lazy_model)
    for y, l, what in zip(ys, ls, ("modules", "parameters", "buffers")):
        assert y == l, f"{what} differ: {set(y) ^ set(l)}"
    for name in HYPERPARAMETERS:
        if hasattr(yaml_model, name):
            assert getattr(yaml_model, name) == getattr(lazy_model, name), name
    for name in ("pixel_mean", "pixel_std"):
        assert torch.equal(getattr(yaml_model, name), getattr(lazy_model, name)), name
    assert [c.tolist() for c in yaml_model.anchor_generator.cell_anchors] == [
        c.tolist() for c in lazy_model.anchor_generator.cell_anchors
    ]


@pytest.mark.parametrize("yaml_name, lazy_name", QUICKSTART_PAIRS)
def test_yaml_and_lazy_build_the_same_quickstart_model(yaml_name, lazy_name):
    yaml_model = build_model(quickstart_cfg(yaml_name))
    lazy_model = instantiate(load_lazy(lazy_name).model)
    assert_same_model(yaml_model, lazy_model)

    lazy_model.load_state_dict(yaml_model.state_dict())
    gen = torch.Generator().manual_seed(0)
    inputs = [
        {"image": torch.randint(0, 256, (3, 128, 160), generator=gen, dtype=torch.uint8)},
        {"image": torch.randint(0, 256, (3, 144, 128), generator=gen, dtype=torch.uint8)},
    ]
    with torch.no_grad():
        for model in (yaml_model, lazy_model):
            model.eval()
            model.test_score_thresh = 0.0  # a fresh model scores below the default threshold
        outs = [m.head(m.extract_features(m.preprocess_image(inputs))) for m in (yaml_model, lazy_model)]
        for y, l in zip(outs[0], outs[1]):  # every head output of every level
            assert all(torch.equal(a, b) for a, b in zip(y, l))
        dets = [m(inputs) for m in (yaml_model, lazy_model)]
    for y, l in zip(*dets):
        y, l = y["instances"], l["instances"]
        assert len(y) == len(l) > 0
        assert torch.equal(y.pred_boxes.tensor, l.pred_boxes.tensor)
        assert torch.equal(y.scores, l.scores) and torch.equal(y.pred_classes, l.pred_classes)

    # the same losses in training mode: the loss hyperparameters agree too
    batch = [dict(x, instances=_instances(*x["image"].shape[1:])) for x in inputs]
    with EventStorage():
        losses = [m.train()(batch) for m in (yaml_model, lazy_model)]
    assert losses[0].keys() == losses[1].keys()
    for k in losses[0]:
        assert torch.allclose(losses[0][k], losses[1][k]), k


def _instances(h, w):
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor([[10.0, 12.0, 60.0, 70.0], [70.0, 30.0, 110.0, 100.0]]))
    inst.gt_classes = torch.tensor([1, 4])
    return inst


def augmentations(augs):
    """Types and arguments of augmentations (lists and tuples alike)."""
    def norm(v):
        return tuple(v) if isinstance(v, (list, tuple, ListConfig)) else v

    return [(type(a).__name__, {k: norm(v) for k, v in vars(a).items()}) for a in augs]


def _lr_multipliers(scheduler, iters):
    out = []
    for it in iters:
        scheduler.last_epoch = it
        out.append(scheduler.get_lr()[0] / scheduler.base_lrs[0])
    return out


@pytest.mark.parametrize(
    "yaml_file, lazy_name",
    [
        ("quickstart/GFL-student.yaml", "quickstart/gfl_student.py"),
        ("GFL-R50-1x.yaml", "gfl_r50_1x.py"),
        ("GFL-R101-2x-ms.yaml", "gfl_r101_2x_ms.py"),
        ("ATSS-R50-1x.yaml", "atss_r50_1x.py"),
        ("ATSS-R101-1x.yaml", "atss_r101_1x.py"),
        ("mmdet/GFL-R50-1x.yaml", "mmdet/gfl_r50_1x.py"),
        ("mmdet/GFL-R101-2x-ms.yaml", "mmdet/gfl_r101_2x_ms.py"),
        ("mmdet/ATSS-R50-1x.yaml", "mmdet/atss_r50_1x.py"),
        ("mmdet/ATSS-R101-1x.yaml", "mmdet/atss_r101_1x.py"),
        ("quickstart/FasterRCNN-student.yaml", "quickstart/faster_rcnn_student.py"),
        ("quickstart/MaskRCNN-teacher.yaml", "quickstart/mask_rcnn_teacher.py"),
        ("FasterRCNN-R50-FPN-1x.yaml", "faster_rcnn_r50_fpn_1x.py"),
        ("FasterRCNN-R101-FPN-3x.yaml", "faster_rcnn_r101_fpn_3x.py"),
        ("MaskRCNN-R50-FPN-1x.yaml", "mask_rcnn_r50_fpn_1x.py"),
        ("MaskRCNN-R101-FPN-3x.yaml", "mask_rcnn_r101_fpn_3x.py"),
    ],
)
def test_yaml_and_lazy_share_the_training_recipe(yaml_file, lazy_name):
    """Data, augmentations, batch size, optimizer, schedule, checkpoints, weights (no model)."""
    y = setup_cfg(os.path.join(REPO, "configs", yaml_file))
    lz = load_lazy(lazy_name)
    train, test = lz.dataloader.train, lz.dataloader.test
    assert (train.dataset.names,) == tuple(y.DATASETS.TRAIN)
    assert (test.dataset.names,) == tuple(y.DATASETS.TEST)
    assert train.dataset.filter_empty == y.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    assert train.total_batch_size == y.SOLVER.IMS_PER_BATCH
    assert train.num_workers == y.DATALOADER.NUM_WORKERS
    assert augmentations(instantiate(train.mapper.augmentations)) == augmentations(
        build_augmentation(y, True)
    )
    assert augmentations(instantiate(test.mapper.augmentations)) == augmentations(
        build_augmentation(y, False)
    )
    assert train.mapper.image_format == y.INPUT.FORMAT
    assert train.mapper.get("use_instance_mask", False) == y.MODEL.MASK_ON
    if y.MODEL.MASK_ON:
        assert train.mapper.instance_mask_format == y.INPUT.MASK_FORMAT
    clip = y.SOLVER.CLIP_GRADIENTS
    want = dict(clip_type=clip.CLIP_TYPE, clip_value=clip.CLIP_VALUE) if clip.ENABLED else None
    assert lz.train.get("clip_gradients") == want

    assert lz.optimizer.lr == y.SOLVER.BASE_LR
    assert lz.optimizer.momentum == y.SOLVER.MOMENTUM
    assert lz.optimizer.weight_decay == y.SOLVER.WEIGHT_DECAY
    assert lz.optimizer.params.weight_decay_norm == y.SOLVER.WEIGHT_DECAY_NORM
    assert lz.train.max_iter == y.SOLVER.MAX_ITER
    assert lz.train.checkpointer.period == y.SOLVER.CHECKPOINT_PERIOD
    assert lz.train.eval_period == y.TEST.EVAL_PERIOD
    assert lz.train.output_dir == y.OUTPUT_DIR
    assert lz.train.init_checkpoint == y.MODEL.WEIGHTS
    assert lz.train.seed == y.SEED
    assert lz.train.device == ("cpu" if "quickstart" in yaml_file else "cuda")

    # the LR multiplier at a few iterations, against Detectron2's YAML scheduler
    max_iter = y.SOLVER.MAX_ITER
    iters = [0, y.SOLVER.WARMUP_ITERS // 2, y.SOLVER.WARMUP_ITERS] + [
        s + d for s in y.SOLVER.STEPS for d in (-1, 0, 1)
    ] + [max_iter - 1]
    optim = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    yaml_sched = build_lr_scheduler(y, optim)
    lazy_mult = instantiate(lz.lr_multiplier)
    expected = _lr_multipliers(yaml_sched, iters)
    assert [lazy_mult(it / max_iter) for it in iters] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    "lazy_name, yaml_file, cls",
    [
        ("gfl_r50_1x.py", "GFL-R50-1x.yaml", GFL),
        ("atss_r50_1x.py", "ATSS-R50-1x.yaml", ATSS),
        ("mmdet/gfl_r50_1x.py", "mmdet/GFL-R50-1x.yaml", GFL),
        ("mmdet/atss_r50_1x.py", "mmdet/ATSS-R50-1x.yaml", ATSS),
        ("faster_rcnn_r50_fpn_1x.py", "FasterRCNN-R50-FPN-1x.yaml", DistillableRCNN),
        ("mask_rcnn_r50_fpn_1x.py", "MaskRCNN-R50-FPN-1x.yaml", DistillableRCNN),
    ],
)
def test_full_size_lazy_configs_build_the_yaml_models(lazy_name, yaml_file, cls):
    lz = load_lazy(lazy_name)
    assert lz.train.init_checkpoint.endswith("R-50.pkl" if "mmdet" not in lazy_name else "R50-1x.pth")
    lazy_model = instantiate(lz.model)  # weights are not loaded
    assert type(lazy_model) is cls
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    yaml_model = build_model(setup_cfg(os.path.join(REPO, "configs", yaml_file), opts))
    assert_same_model(yaml_model, lazy_model)


@pytest.mark.parametrize(
    "lazy_name, yaml_file",
    [
        ("tid_gfl_r50_mmdet_teacher.py", "TID-R50-mmdet-teacher.yaml"),
        ("tid_atss_r50_mmdet_teacher.py", "TID-ATSS-R50-mmdet-teacher.yaml"),
    ],
)
def test_lazy_mmdet_teacher_configs_match_the_yaml(lazy_name, yaml_file):
    """An RGB mmdetection-layout teacher and a BGR Detectron2-style student, as the YAML twins."""
    lz = load_lazy(lazy_name)
    y = setup_cfg(os.path.join(REPO, "configs", yaml_file))
    teacher, student = lz.model.teacher.teacher, lz.model.student
    assert lz.model.teacher.weights == y.MODEL.TEACHER.WEIGHTS
    assert teacher.input_format == "RGB" and not teacher.backbone.bottom_up.stages.stride_in_1x1
    assert teacher.backbone.bottom_up.stages.depth == 101
    assert student.input_format == y.INPUT.FORMAT == lz.dataloader.train.mapper.image_format == "BGR"
    assert lz.model.distillers.methods == list(y.MODEL.DISTILL.METHODS)
    assert lz.train.output_dir == y.OUTPUT_DIR


def test_r101_lazy_configs_are_r101():
    for name in ("gfl_r101_2x_ms.py", "atss_r101_1x.py", "mmdet/gfl_r101_2x_ms.py", "mmdet/atss_r101_1x.py",
                 "faster_rcnn_r101_fpn_3x.py", "mask_rcnn_r101_fpn_3x.py"):
        lz = load_lazy(name)
        assert lz.model.backbone.bottom_up.stages.depth == 101
        assert lz.train.init_checkpoint.endswith("R-101.pkl" if "mmdet" not in name else ".pth")


def run_script(script: str, args, tiny_shapes, cwd) -> str:
    """Run a projects/TID script in a child process that registers the tiny dataset first (the
    test session registers it, the script's process would not)."""
    train_name, val_name = tiny_shapes
    json_file = MetadataCatalog.get(train_name).json_file
    launcher = (
        "import runpy, sys\n"
        "from tid_d2.data import register_shapes\n"
        "kw = dict(root=%r, sides=(128, 192))\n"
        "register_shapes(%r, 'train', num_images=16, **kw)\n"
        "register_shapes(%r, 'val', num_images=8, **kw)\n"
        "sys.argv = sys.argv[1:]\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    ) % (os.path.dirname(os.path.dirname(os.path.dirname(json_file))), train_name, val_name)
    cmd = [sys.executable, "-c", launcher, os.path.join(REPO, "projects", "TID", script), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def tiny_lazy_args(quickstart_config: str, out, tiny_shapes):
    """lazy_train_net.py arguments: a configs/lazy/quickstart file on the tiny dataset, 2 images of
    128 px per batch, no loader workers, outputs under `out`."""
    train_name, val_name = tiny_shapes
    return [
        "--config-file", os.path.join(LAZY, "quickstart", quickstart_config),
        f"train.output_dir={out}",
        f"dataloader.train.dataset.names={train_name}",
        f"dataloader.test.dataset.names={val_name}",
        "dataloader.train.total_batch_size=2",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
        "dataloader.train.mapper.augmentations.0.max_size=192",
        "dataloader.test.mapper.augmentations.0.short_edge_length=128",
        "dataloader.test.mapper.augmentations.0.max_size=192",
    ]


def copypaste_numbers(log: str):
    """The AP numbers print_csv_format logs for the bbox task ("copypaste: 1.2,3.4,...")."""
    return re.findall(r"copypaste: ([-\d.,na]+)\s*$", log, flags=re.M)


def test_lazy_train_net_trains_evaluates_and_resumes(tiny_shapes, tmp_path):
    """The script end to end on the CPU: 2 iterations on the tiny dataset (checkpoint, metrics,
    config, evaluation after training), --eval-only on the checkpoint (the same AP), --resume."""
    train_name = tiny_shapes[0]
    out = tmp_path / "out"
    args = tiny_lazy_args("gfl_student.py", out, tiny_shapes) + [
        "train.device=cpu",
        "model.test_score_thresh=0.0",  # an untrained model still yields detections
    ]
    log = run_script("lazy_train_net.py", args + ["train.max_iter=2"], tiny_shapes, tmp_path)
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 1
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    assert metrics[0]["iteration"] == 1
    losses = [v for k, v in metrics[0].items() if k.startswith("loss")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)  # the GFL losses
    saved = LazyConfig.load(str(out / "config.yaml"))
    assert saved.train.max_iter == 2 and saved.dataloader.train.dataset.names == train_name
    trained = copypaste_numbers(log)  # evaluated after training
    assert len(trained) == 1 and trained[0].split(",")[0] != "nan"

    weights = f"train.init_checkpoint={out / 'model_final.pth'}"
    log = run_script("lazy_train_net.py", ["--eval-only"] + args + [weights], tiny_shapes, tmp_path)
    assert copypaste_numbers(log) == trained

    resume = ["--resume"] + args + ["train.max_iter=3"]
    log = run_script("lazy_train_net.py", resume, tiny_shapes, tmp_path)
    assert "Starting training from iteration 2" in log
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 2


def import_lazy_train_net():
    """projects/TID/lazy_train_net.py as a module."""
    sys.path.insert(0, os.path.join(REPO, "projects", "TID"))
    try:
        import lazy_train_net
    finally:
        sys.path.pop(0)
    return lazy_train_net


def test_lazy_train_net_names_missing_entries(tmp_path):
    lazy_train_net = import_lazy_train_net()
    cfg = load_lazy("quickstart/gfl_student.py")
    del cfg.optimizer
    with pytest.raises(KeyError, match="optimizer"):
        lazy_train_net.check_config(cfg, "x.py", eval_only=False)
    lazy_train_net.check_config(cfg, "x.py", eval_only=True)  # evaluation needs no optimizer
    cfg.train.amp.enabled = True
    cfg.train.device = "cpu"
    with pytest.raises(ValueError, match="amp"):
        lazy_train_net.resolve_device(cfg)


# ----- TeacherStudent (TID) from LazyConfig -------------------------------------------------------
TID_SCALARS = (
    "tasks", "threshold_mode", "pos_thresh", "neg_thresh",
    "score_levels", "cls_tau", "cls_tau_bg", "key_thresh", "weak_thresh", "ldam", "area_precedence",
    "soft_weights",
    "alpha", "beta", "gamma", "loss_weight", "normalize",
)


def test_yaml_and_lazy_build_the_same_tid_model(teachers):
    """configs/quickstart/TID-GFL.yaml and configs/lazy/quickstart/tid_gfl.py: the same student,
    teacher (with the same loaded weights), adapter and TID hyper-parameters."""
    yaml_model = build_model(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"]))
    lz = load_lazy("quickstart/tid_gfl.py")
    lz.model.teacher.weights = teachers["GFL-teacher"]
    lazy_model = instantiate(lz.model)
    assert type(lazy_model).__name__ == "TeacherStudent"
    assert_same_model(yaml_model.student, lazy_model.student)
    assert_same_model(yaml_model.teacher, lazy_model.teacher)
    assert structure(yaml_model) == structure(lazy_model)  # student + distillers (adapter)
    for k, v in yaml_model.teacher.state_dict().items():
        assert torch.equal(v, lazy_model.teacher.state_dict()[k]), k
    assert not lazy_model.teacher.training and not any(
        p.requires_grad for p in lazy_model.teacher.parameters()
    )
    y, l = yaml_model.distillers["tid"], lazy_model.distillers["tid"]
    assert {k: getattr(y, k) for k in TID_SCALARS} == {k: getattr(l, k) for k in TID_SCALARS}


@pytest.mark.parametrize("arch, short", [("FasterRCNN", "faster"), ("MaskRCNN", "mask")])
def test_full_size_lazy_two_stage_tid_configs_match_the_yaml(arch, short):
    lz = load_lazy(f"tid_{short}_rcnn_r101_r50_1x.py")
    y = setup_cfg(os.path.join(REPO, "configs", f"TID-{arch}-R101-R50.yaml"))
    teacher, student = lz.model.teacher.teacher, lz.model.student
    assert teacher.backbone.bottom_up.stages.depth == 101 and student.backbone.bottom_up.stages.depth == 50
    assert (student.roi_heads.mask_head is not None) == (arch == "MaskRCNN") == y.MODEL.MASK_ON
    assert lz.model.teacher.weights == y.MODEL.TEACHER.WEIGHTS
    assert lz.model.distillers.methods == list(y.MODEL.DISTILL.METHODS)
    assert lz.train.init_checkpoint == y.MODEL.WEIGHTS
    t = setup_cfg(os.path.join(REPO, y.MODEL.TEACHER.CONFIG_FILE))
    assert t.MODEL.RESNETS.DEPTH == 101 and t.MODEL.MASK_ON == y.MODEL.MASK_ON


def test_full_size_lazy_tid_config_pairs_r101_teacher_with_r50_student():
    lz = load_lazy("tid_gfl_r101_r50_1x.py")
    assert lz.model.teacher.teacher.backbone.bottom_up.stages.depth == 101
    assert lz.model.student.backbone.bottom_up.stages.depth == 50
    assert lz.model.teacher.weights == "output/GFL-R101-2x-ms/model_final.pth"
    assert lz.train.init_checkpoint.endswith("R-50.pkl")  # loaded into the student
    assert lz.model.distillers.methods == ["TID"]
    # the channels come from the models: the builder gets the layout of teacher and student
    channels = lz.model.teacher.teacher.backbone.out_channels, lz.model.student.backbone.out_channels
    assert channels == (256, 256)
    tid = instantiate(lz.model.distillers)(DistillLayout(*channels))["tid"]
    assert isinstance(tid.adapter, torch.nn.Identity)
    yaml_cfg = setup_cfg(os.path.join(REPO, "configs", "TID-R50.yaml"))
    assert lz.train.output_dir == yaml_cfg.OUTPUT_DIR
    assert lz.dataloader.train.dataset.names == yaml_cfg.DATASETS.TRAIN[0]


def test_lazy_train_net_distills_and_evaluates_the_student_alone(teachers, tiny_shapes, tmp_path):
    """lazy_train_net.py on a TID LazyConfig: the TID hook runs (warm-up, diagnostics), losses and
    checkpoints are the distillation ones, and --eval-only needs no teacher."""
    out = tmp_path / "out"
    args = tiny_lazy_args("tid_gfl.py", out, tiny_shapes) + [
        f"model.teacher.weights={teachers['GFL-teacher']}",
        "model.student.test_score_thresh=0.0",
        "model.distillers.warmup_iters=4",
        "model.distillers.log_period=1",
    ]
    log = run_script("lazy_train_net.py", args + ["train.max_iter=2", "train.log_period=1"],
                     tiny_shapes, tmp_path)
    metrics = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last = [m for m in metrics if "total_loss" in m][-1]
    for k in ("loss_tid_key", "loss_tid_weak", "loss_tid_other", "loss_gfl_cls"):
        assert math.isfinite(last[k]), k
    assert last["distill/weight"] == 0.5  # (iteration 1 + 1) / warmup_iters 4
    assert math.isfinite(last["grad_norm"]) and "grad_clipped_steps" in last  # train.distill.max_grad_norm
    assert 0.0 <= last["tid/p3/frac_key"] <= 1.0
    ckpt = torch.load(out / "model_final.pth", weights_only=False)["model"]
    assert "distillers.tid.adapter.weight" in ckpt and not any(k.startswith("teacher") for k in ckpt)
    trained = copypaste_numbers(log)
    assert len(trained) == 1 and trained[0].split(",")[0] != "nan"

    no_teacher = [a for a in args if not a.startswith("model.teacher.weights")]
    no_teacher += ["model.teacher.weights=/nonexistent/teacher.pth",
                   f"train.init_checkpoint={out / 'model_final.pth'}"]
    log = run_script("lazy_train_net.py", ["--eval-only"] + no_teacher, tiny_shapes, tmp_path)
    assert copypaste_numbers(log) == trained
    saved = ["--eval-only", "--config-file", str(out / "config.yaml"), f"train.output_dir={tmp_path / 'eval'}"]
    saved += no_teacher[-2:]  # the saved config.yaml names its targets as strings
    log = run_script("lazy_train_net.py", saved, tiny_shapes, tmp_path)
    assert copypaste_numbers(log) == trained


def test_lazy_config_rejects_unknown_distill_keys(teachers):
    lazy_train_net = import_lazy_train_net()
    lz = load_lazy("quickstart/tid_gfl.py")
    lazy_train_net.check_config(lz, "tid_gfl.py", eval_only=False)
    lz.train.distill.warmup = 5
    with pytest.raises(KeyError, match="train.distill has unknown keys \\['warmup'\\]"):
        lazy_train_net.check_config(lz, "tid_gfl.py", eval_only=False)
    plain = load_lazy("quickstart/gfl_student.py")
    lazy_train_net.check_config(plain, "gfl_student.py", eval_only=False)


def test_lazy_max_grad_norm_follows_the_yaml_default():
    from tid_d2.engine.lazy import DEFAULT_MAX_GRAD_NORM, _max_grad_norm
    from tid_d2.modeling.teacher_student import TeacherStudent

    y = setup_cfg(os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"))
    lz = load_lazy("quickstart/tid_gfl.py")
    assert lz.train.distill.max_grad_norm == DEFAULT_MAX_GRAD_NORM == y.MODEL.DISTILL.MAX_GRAD_NORM
    ts = TeacherStudent.__new__(TeacherStudent)
    assert _max_grad_norm(lz, ts) == 35.0
    assert _max_grad_norm(lz, torch.nn.Linear(1, 1)) is None  # a plain detector: not clipped
    lz.train.distill.max_grad_norm = 0
    assert _max_grad_norm(lz, ts) is None
    lz.train.distill.max_grad_norm = -1.0
    with pytest.raises(ValueError, match="train.distill.max_grad_norm must be >= 0"):
        _max_grad_norm(lz, ts)
