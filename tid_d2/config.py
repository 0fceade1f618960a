"""`add_tid_config(cfg)`: every config key this project adds to Detectron2's defaults."""
from detectron2.config import CfgNode as CN

from .distill import DISTILLER_REGISTRY

__all__ = ["add_tid_config"]


def _add_dense_head_config(node: CN, num_classes: int = 80) -> None:
    """Keys shared by the GFL, ATSS and FCOS heads."""
    node.NUM_CLASSES = num_classes
    node.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    node.NUM_CONVS = 4
    node.HEAD_NORM = "GN"
    node.PRIOR_PROB = 0.01
    node.SCORE_THRESH_TEST = 0.05
    node.TOPK_CANDIDATES_TEST = 1000
    node.NMS_THRESH_TEST = 0.6


def _add_anchor_point_config(node: CN) -> None:
    """Keys shared by GFL and ATSS (one square anchor per location, ATSS assignment)."""
    node.ANCHOR_SCALE = 8  # one square anchor of ANCHOR_SCALE * stride per location
    node.ATSS_TOPK = 9
    # Clip decoded boxes to the image and drop the empty ones *before* NMS (mmdetection); False:
    # Detectron2's order (NMS on unclipped boxes, clipped when rescaled to the input size).
    node.CLIP_BOXES_TEST = False
    # Locations outside an image's own padded area (the batch padding of a smaller image) get no
    # loss and are not ATSS candidates (mmdetection's anchor valid flags); False: every location
    # of the batch tensor counts.
    node.IGNORE_BATCH_PADDING = False


def add_tid_config(cfg: CN) -> CN:
    """Add the MODEL.GFL/ATSS/FCOS/TEACHER/DISTILL keys (in place; also returns cfg)."""
    _C = cfg

    # --- Backbones ---------------------------------------------------------------------------
    # P6/P7 built from P5 (as GFL/ATSS/FCOS do) when TOP_BLOCK_IN == "p5", from C5 when "res5"; "maxpool":
    # P6 max-pooled from P5 only (the R-CNN layout, with IN_FEATURES res2-res5: P2-P6).
    _C.MODEL.FPN.TOP_BLOCK_IN = "p5"
    # ReLU on P6 before the P7 conv (Detectron2's LastLevelP6P7); False: P7 = conv(P6), as
    # mmdetection's FPN (relu_before_extra_convs=False) and so its GFL/ATSS checkpoints compute.
    _C.MODEL.FPN.P7_RELU = True
    # A narrow ResNet-like backbone for CPU-sized runs (quickstart configs and tests).
    _C.MODEL.TINY_RESNET = CN()
    _C.MODEL.TINY_RESNET.WIDTHS = [16, 32, 64, 128]  # res2..res5 channels
    _C.MODEL.TINY_RESNET.DEPTHS = [1, 1, 1, 1]  # basic blocks per stage
    _C.MODEL.TINY_RESNET.STEM_WIDTH = 16
    _C.MODEL.TINY_RESNET.NORM = "BN"

    # --- GFL (Generalized Focal Loss V1) ------------------------------------------------------
    _C.MODEL.GFL = CN()
    _add_dense_head_config(_C.MODEL.GFL)
    _add_anchor_point_config(_C.MODEL.GFL)
    _C.MODEL.GFL.REG_MAX = 16
    _C.MODEL.GFL.QFL_BETA = 2.0
    _C.MODEL.GFL.LOSS_CLS_WEIGHT = 1.0
    _C.MODEL.GFL.LOSS_DFL_WEIGHT = 0.25
    _C.MODEL.GFL.LOSS_BOX_WEIGHT = 2.0

    # --- ATSS ---------------------------------------------------------------------------------
    _C.MODEL.ATSS = CN()
    _add_dense_head_config(_C.MODEL.ATSS)
    _add_anchor_point_config(_C.MODEL.ATSS)
    # Inference score: "sqrt_product" thresholds, selects and ranks sqrt(class x centerness) (FCOS
    # style); "class_then_product" thresholds and selects on the class score, then ranks (NMS) by
    # class x centerness, as mmdetection's ATSSHead does.
    _C.MODEL.ATSS.SCORE_MODE_TEST = "sqrt_product"
    _C.MODEL.ATSS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.ATSS.FOCAL_LOSS_GAMMA = 2.0
    _C.MODEL.ATSS.LOSS_BOX_WEIGHT = 2.0
    _C.MODEL.ATSS.LOSS_CENTERNESS_WEIGHT = 1.0

    # --- FCOS (Detectron2's own implementation, made buildable from YAML) ----------------------
    _C.MODEL.FCOS = CN()
    _add_dense_head_config(_C.MODEL.FCOS)
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 1.5
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0

    # --- Teacher ------------------------------------------------------------------------------
    _C.MODEL.TEACHER = CN()
    _C.MODEL.TEACHER.CONFIG_FILE = ""  # the teacher's own (plain detector) config
    _C.MODEL.TEACHER.WEIGHTS = ""  # required: a checkpoint DetectionCheckpointer can load
    _C.MODEL.TEACHER.OPTS = []  # extra overrides applied to the teacher config
    _C.TEST.EVAL_TEACHER = False  # evaluate the teacher once before training

    # --- Distillation (method-independent) ----------------------------------------------------
    _C.MODEL.DISTILL = CN()
    _C.MODEL.DISTILL.STUDENT_META_ARCHITECTURE = "GFL"  # the student, built from this config
    _C.MODEL.DISTILL.METHODS = ["TID"]  # registered method names (TID, FITNET, FGD, ...; they combine)
    _C.MODEL.DISTILL.WARMUP_ITERS = 0  # distillation weight ramps linearly 0 -> 1 over these
    _C.MODEL.DISTILL.LOG_PERIOD = 20  # iterations between two writes of each method's diagnostics
    _C.MODEL.DISTILL.ADAPTER = "auto"  # "auto": 1x1 conv when channels differ; "always"; "none"
    # "teacher_rms": feature methods compare teacher and student FPN features divided by the RMS of
    # the teacher's level (scale-free losses); "none": the raw features.
    _C.MODEL.DISTILL.FEATURE_NORM = "none"
    # bound on the joint L2 gradient norm of all trainable parameters at every distillation step
    # (torch clip_grad_norm_, as mmdetection's grad_clip max_norm 35); 0: no clipping.
    _C.MODEL.DISTILL.MAX_GRAD_NORM = 35.0
    # "none" | "neck" | "neck+head": start the student from the teacher's trained FPN (and head), as
    # FGD, PGD and ICD do; shapes must match. Applied at build time, before MODEL.WEIGHTS is loaded.
    _C.MODEL.DISTILL.INHERIT = "none"

    # One node per registered method, MODEL.DISTILL.<NAME>, from the method's own declaration
    # (`Distiller.config` in tid_d2/distill/<name>.py: each key's default and meaning).
    shared = set(_C.MODEL.DISTILL)
    for name, method in DISTILLER_REGISTRY:
        if name.upper() in shared:
            raise TypeError(f"distiller {name}: its name is a shared MODEL.DISTILL key {sorted(shared)}")
        _C.MODEL.DISTILL[name.upper()] = method.default_node()
    # MODEL.TID moved under MODEL.DISTILL with every other method: an old key names its new place.
    renamed = {"MODEL.TID": "MODEL.DISTILL.TID"}
    renamed.update({f"MODEL.TID.{k}": f"MODEL.DISTILL.TID.{k}" for k in _C.MODEL.DISTILL.TID})
    # one key is now the loosest positive IoU of both threshold modes (fixed value and assigner floor)
    merged = {
        "MODEL.TID.MIN_POS_THRESH": "MODEL.DISTILL.TID.POS_THRESH",
        "MODEL.DISTILL.TID.MIN_POS_THRESH": "MODEL.DISTILL.TID.POS_THRESH",
    }
    for old, new in {**renamed, **merged}.items():
        if not _C.key_is_renamed(old):
            note = "POS_THRESH is also the floor of assigner mode" if old in merged else None
            _C.register_renamed_key(old, new, note)
    # FGD's level count comes from the built detectors now (DistillLayout): an old key is ignored.
    if "MODEL.DISTILL.FGD.NUM_LEVELS" not in _C.__dict__[CN.DEPRECATED_KEYS]:  # key_is_deprecated would warn
        _C.register_deprecated_key("MODEL.DISTILL.FGD.NUM_LEVELS")
    return cfg
