"""`add_tid_config(cfg)`: every config key this project adds to Detectron2's defaults."""
from detectron2.config import CfgNode as CN

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
    """Add the MODEL.GFL/ATSS/FCOS/TEACHER/TID/DISTILL keys (in place; also returns cfg)."""
    _C = cfg

    # --- Backbones ---------------------------------------------------------------------------
    # P6/P7 built from P5 (as GFL/ATSS/FCOS do) when TOP_BLOCK_IN == "p5", from C5 when "res5".
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
    _C.MODEL.DISTILL.METHODS = ["TID"]  # TID, FITNET, FGD, PKD, CWD, LD, PGD, CROSSKD (they combine)
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

    # FitNet-style feature imitation: MSE over all locations and channels of all FPN levels.
    _C.MODEL.DISTILL.FITNET = CN()
    _C.MODEL.DISTILL.FITNET.LOSS_WEIGHT = 1.0  # weight of the mean squared error
    # FGD (Yang et al., CVPR 2022): focal (fg/bg masks, spatial/channel attention) + global
    # (GcBlock relation) distillation; defaults: the authors' RetinaNet and GFL configs (sum reduction).
    _C.MODEL.DISTILL.FGD = CN()
    _C.MODEL.DISTILL.FGD.TEMPERATURE = 0.5  # temperature of the spatial/channel attention
    _C.MODEL.DISTILL.FGD.ALPHA = 0.001  # weight of the foreground feature loss
    _C.MODEL.DISTILL.FGD.BETA = 0.0005  # weight of the background feature loss
    _C.MODEL.DISTILL.FGD.GAMMA = 0.0005  # weight of the attention (mask) loss
    _C.MODEL.DISTILL.FGD.LAMBDA = 0.000005  # weight of the global relation loss
    # FPN levels distilled, each with its own context modules; 0: the student head's levels
    # (len(MODEL.<DISTILL.STUDENT_META_ARCHITECTURE>.IN_FEATURES)).
    _C.MODEL.DISTILL.FGD.NUM_LEVELS = 0
    # PKD (Cao et al., NeurIPS 2022): MSE / 2 between per-channel standardized features (~ 1 - r).
    _C.MODEL.DISTILL.PKD = CN()
    _C.MODEL.DISTILL.PKD.LOSS_WEIGHT = 10.0  # per level; mmrazor's dense-detector configs
    # CWD (Shu et al., ICCV 2021): KL between per-channel spatial softmax distributions.
    _C.MODEL.DISTILL.CWD = CN()
    _C.MODEL.DISTILL.CWD.TAU = 1.0  # softmax temperature
    _C.MODEL.DISTILL.CWD.LOSS_WEIGHT = 10.0  # per level; mmrazor's FPN detection configs
    # LD (Zheng et al., CVPR 2022): KL between GFL box-side distributions (GFL teacher and student).
    # PGD (ECCV 2022), its GFL R-101 -> R-50 config (which also starts the student from the
    # teacher's neck and head: MODEL.DISTILL.INHERIT "neck+head")
    _C.MODEL.DISTILL.PGD = CN()
    _C.MODEL.DISTILL.PGD.TEMPERATURE = 0.8  # attention softmax temperature
    _C.MODEL.DISTILL.PGD.ALPHA = 0.04  # classification-side foreground feature loss
    _C.MODEL.DISTILL.PGD.BETA = 0.02  # classification-side background feature loss
    _C.MODEL.DISTILL.PGD.GAMMA = 0.064  # regression-side feature loss
    _C.MODEL.DISTILL.PGD.DELTA = 0.0008  # attention imitation
    _C.MODEL.DISTILL.PGD.LEVEL_WEIGHTS = [1.0, 1.25, 1.5, 1.75, 2.0]  # classification side, P3..P7
    _C.MODEL.DISTILL.PGD.TOPK = 30  # key predictive locations per GT
    _C.MODEL.DISTILL.PGD.CLS_QUALITY_ALPHA = 0.8  # q = score^(1-a) IoU^a, classification mask
    _C.MODEL.DISTILL.PGD.REG_QUALITY_ALPHA = 0.6  # the same, regression mask

    # CrossKD (CVPR 2024), its GFL R-101 -> R-50 config; the ATSS one uses BOX_WEIGHT 1.0
    _C.MODEL.DISTILL.CROSSKD = CN()
    _C.MODEL.DISTILL.CROSSKD.CLS_WEIGHT = 1.0  # KD quality focal loss of the cross head's classes
    _C.MODEL.DISTILL.CROSSKD.CLS_BETA = 1.0  # its focusing exponent
    _C.MODEL.DISTILL.CROSSKD.BOX_WEIGHT = 2.0  # GIoU of cross vs teacher boxes
    _C.MODEL.DISTILL.CROSSKD.DIST_WEIGHT = 3.0  # KL of GFL box distributions (GFL only)
    _C.MODEL.DISTILL.CROSSKD.DIST_TAU = 1.0  # its temperature

    _C.MODEL.DISTILL.LD = CN()
    _C.MODEL.DISTILL.LD.TAU = 10.0  # softmax temperature
    _C.MODEL.DISTILL.LD.LOSS_WEIGHT = 0.25  # main region: the student assigner's positives
    _C.MODEL.DISTILL.LD.VLR_WEIGHT = 0.25  # valuable localization region (0 disables it)
    _C.MODEL.DISTILL.LD.VLR_ALPHA = 0.25  # VLR: VLR_ALPHA * thr_pos <= DIoU(anchor, GT) < thr_pos
    _C.MODEL.DISTILL.LD.MAIN_IOU_THRESH = 0.5  # teacher-box IoU main region if no extras["pos_mask"]

    # --- TID: Task Integration Distillation (docs/method.md) ---------------------------------
    _C.MODEL.TID = CN()
    _C.MODEL.TID.TASKS = "both"  # "both" | "cls" | "reg": which DIEM scores make the importance
    _C.MODEL.TID.THRESHOLD_MODE = "assigner"  # "assigner" (per-GT ATSS threshold) | "fixed"
    _C.MODEL.TID.POS_THRESH = 0.5  # thr_pos in "fixed" mode
    # "assigner" mode: an assigner's thr_pos is raised to at least this (its anchor-IoU thresholds
    # fall to a few percent for small GTs; 0.5 is the loosest IoU a detection metric accepts)
    _C.MODEL.TID.MIN_POS_THRESH = 0.5
    _C.MODEL.TID.NEG_THRESH = 0.4  # thr_neg (both modes; clamped below thr_pos)
    _C.MODEL.TID.SCORE_LEVELS = [2.0, 1.5, 0.4]  # DIEM's good / moderate / poor score values
    _C.MODEL.TID.CLS_TAU = 0.3  # tau: confidence of a "confident" class prediction
    _C.MODEL.TID.CLS_TAU_BG = 0.05  # tau_bg: confidence below which background is "clean"
    _C.MODEL.TID.KEY_THRESH = 3.0  # tau_K: the key test Score^T >= tau_K (hi x mid)
    _C.MODEL.TID.WEAK_THRESH = 0.5  # tau_W: the weak test Score^T - Score^S >= tau_W
    # a location passing both tests is "weak" (W = weak test, K = key test \ W: the student lags
    # a good teacher there) or "key" (K = key test, W = weak test \ K, the first reading)
    _C.MODEL.TID.AREA_PRECEDENCE = "weak"
    _C.MODEL.TID.LDAM = True  # off: only K and O areas
    _C.MODEL.TID.SOFT_WEIGHTS = False  # weight K by Score^T and W by delta inside the areas
    _C.MODEL.TID.ALPHA = 2.0  # weight of L_K
    _C.MODEL.TID.BETA = 2.0  # weight of L_W
    _C.MODEL.TID.GAMMA = 0.5  # weight of L_O (gamma < alpha, beta)
    # SFDM denominator: "all" divides each area's summed squared distance by all locations (so
    # L_K + L_W + L_O is FitNet's MSE at unit weights); "area" by the area's own size (a mean
    # inside each area, which amplifies small key areas).
    _C.MODEL.TID.NORMALIZE = "all"
    _C.MODEL.TID.LOSS_WEIGHT = 2.0  # lambda: multiplies alpha L_K + beta L_W + gamma L_O
    _C.MODEL.TID.VIS_PERIOD = 0  # >0: TID puts its area sheet into TensorBoard ("tid/areas") this often
    return cfg
