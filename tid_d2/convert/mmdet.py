"""
mmdetection (2.x/3.x) GFL and ATSS checkpoints -> this project's GFL/ATSS state dicts.

mmdetection's model zoo holds well-trained GFL/ATSS teachers; converted, they load strictly into the
models built from `configs/mmdet/*.yaml` (which reproduce mmdetection's computation: pytorch-style
frozen-BN ResNet, RGB input, no ReLU before P7) and give the same outputs. Every key of the file is
either mapped or one of a few known non-weights (BN step counters, GFL's constant integral bins);
anything else is an error, so a conversion can never silently drop weights.
"""
import re
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import torch

from ..checkpoint import atomic_write, read_error

__all__ = [
    "convert_mmdet_checkpoint",
    "convert_mmdet_state_dict",
    "mmdet_architecture",
    "mmdet_num_classes",
    "mmdet_resnet_depth",
    "read_mmdet_state_dict",
]

StateDict = Dict[str, torch.Tensor]

#: ResNet depth from the number of blocks of each of layer1..layer4
_RESNET_DEPTHS = {(3, 4, 6, 3): 50, (3, 4, 23, 3): 101, (3, 8, 36, 3): 152}
#: key prefixes of a distillation checkpoint (teacher and student in one file)
_DISTILL_PREFIXES = ("teacher.", "student.", "distill")
#: keys that hold no weights of our model: BN step counters, GFL's constant bins 0..reg_max
_IGNORED = re.compile(r"(.*\.num_batches_tracked|bbox_head\.integral\.project)$")


_BN = r"(weight|bias|running_mean|running_var)$"
#: one mmdetection ResNet stage `layer<i>.<block>.`, our `res<i+1>.<block>.`
_BLOCK = r"^backbone\.layer(\d)\.(\d+)\."


def _block(m: re.Match) -> str:
    return f"backbone.bottom_up.res{int(m.group(1)) + 1}.{m.group(2)}"


def _tower_rules(src: str, dst: str) -> list:
    """Head tower conv i (ConvModule: conv + gn) -> our nn.Sequential of [conv, GN, ReLU] per conv:
    conv at index 3i, GN at 3i + 1."""
    return [
        (
            "head",
            re.compile(rf"^bbox_head\.{src}\.(\d+)\.conv\.weight$"),
            lambda m: f"head.{dst}.{3 * int(m.group(1))}.weight",
        ),
        (
            "head",
            re.compile(rf"^bbox_head\.{src}\.(\d+)\.gn\.(weight|bias)$"),
            lambda m: f"head.{dst}.{3 * int(m.group(1)) + 1}.{m.group(2)}",
        ),
    ]


# (part, pattern, replacement): replacement is a template or a function of the match.
_RULES: List[Tuple[str, re.Pattern, object]] = [
    ("backbone", re.compile(r"^backbone\.conv1\.weight$"), "backbone.bottom_up.stem.conv1.weight"),
    ("backbone", re.compile(r"^backbone\.bn1\." + _BN), r"backbone.bottom_up.stem.conv1.norm.\1"),
    (
        "backbone",
        re.compile(_BLOCK + r"conv(\d)\.weight$"),
        lambda m: f"{_block(m)}.conv{m.group(3)}.weight",
    ),
    (
        "backbone",
        re.compile(_BLOCK + r"bn(\d)\." + _BN),
        lambda m: f"{_block(m)}.conv{m.group(3)}.norm.{m.group(4)}",
    ),
    ("backbone", re.compile(_BLOCK + r"downsample\.0\.weight$"), lambda m: f"{_block(m)}.shortcut.weight"),
    (
        "backbone",
        re.compile(_BLOCK + r"downsample\.1\." + _BN),
        lambda m: f"{_block(m)}.shortcut.norm.{m.group(3)}",
    ),
    (
        "neck",
        re.compile(r"^neck\.lateral_convs\.(\d)\.conv\.(weight|bias)$"),
        lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 3}.{m.group(2)}",
    ),
    (
        "neck",
        re.compile(r"^neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)$"),
        lambda m: f"backbone.fpn_output{int(m.group(1)) + 3}.{m.group(2)}",
    ),
    ("neck", re.compile(r"^neck\.fpn_convs\.3\.conv\.(weight|bias)$"), r"backbone.top_block.p6.\1"),
    ("neck", re.compile(r"^neck\.fpn_convs\.4\.conv\.(weight|bias)$"), r"backbone.top_block.p7.\1"),
    *_tower_rules("cls_convs", "cls_subnet"),
    *_tower_rules("reg_convs", "bbox_subnet"),
]
_RULES += [
    ("head", re.compile(r"^bbox_head\.(?:gfl|atss)_cls\.(weight|bias)$"), r"head.cls_score.\1"),
    ("head", re.compile(r"^bbox_head\.(?:gfl|atss)_reg\.(weight|bias)$"), r"head.bbox_pred.\1"),
    ("head", re.compile(r"^bbox_head\.atss_centerness\.(weight|bias)$"), r"head.centerness.\1"),
    ("head", re.compile(r"^bbox_head\.scales\.(\d+)\.scale$"), r"head.scales.\1.scale"),
]


def _map_key(key: str) -> Optional[Tuple[str, str]]:
    """(part, our key) for an mmdetection key, None when no rule matches."""
    for part, pattern, repl in _RULES:
        m = pattern.match(key)
        if m:
            return part, (repl(m) if callable(repl) else m.expand(repl))
    return None


def read_mmdet_state_dict(path: str, trust_pickle: bool = False) -> StateDict:
    """
    The `state_dict` of an mmdetection checkpoint file (or a bare state dict). Errors name the file:
    unreadable (truncated, not a torch file), no state dict, or a distillation checkpoint.
    `trust_pickle` reads files whose `meta` holds non-tensor objects (torch's weights_only=False:
    only for files from a trusted source).
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except FileNotFoundError:
        raise FileNotFoundError(f"mmdetection checkpoint not found: {path}") from None
    if magic != b"PK" and magic[:1] != b"\x80":  # torch's zip format, or its legacy pickle
        raise ValueError(
            f"{path} cannot be read as a torch checkpoint: it is neither a zip nor a pickle file "
            f"(it starts with {magic!r}; an HTML error page or a truncated download?)"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch/pickle/zip raise many types for unreadable files
        hint = (
            " If the file is from a trusted source and its `meta` holds Python objects, rerun with "
            "--trust-pickle."
            if "Unsupported global" in str(e)
            else " Is it truncated (an interrupted download)?"
        )
        raise ValueError(
            f"{path} cannot be read as a torch checkpoint ({read_error(e)}).{hint}"
        ) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ValueError(f"{path} holds no mmdetection state_dict (expected {{'state_dict': ...}})")
    distill = sorted(k for k in state if k.startswith(_DISTILL_PREFIXES))
    if distill:
        raise ValueError(
            f"{path} is a distillation checkpoint (keys such as {distill[:3]}): convert a plain GFL "
            "or ATSS detector checkpoint (e.g. the teacher's own file from mmdetection's model zoo)"
        )
    return state


def mmdet_resnet_depth(state: StateDict) -> int:
    """ResNet depth from the number of blocks per stage of `backbone.layer{1..4}`."""
    blocks = {}
    for k in state:
        m = re.match(r"^backbone\.layer(\d)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    counts = tuple(len(blocks.get(i, ())) for i in (1, 2, 3, 4))
    if counts not in _RESNET_DEPTHS:
        raise ValueError(f"backbone is not a ResNet-50/101/152: blocks per stage {counts}")
    return _RESNET_DEPTHS[counts]


#: the classification layer of each supported head
_CLS_KEYS = {"GFL": "bbox_head.gfl_cls.weight", "ATSS": "bbox_head.atss_cls.weight"}


def mmdet_architecture(state: StateDict) -> str:
    """"GFL" or "ATSS", from the head's prediction layer names."""
    for arch, key in _CLS_KEYS.items():
        if key in state:
            return arch
    heads = sorted({".".join(k.split(".")[:2]) for k in state if "head" in k.split(".")[0]})
    raise ValueError(
        "neither a GFL (bbox_head.gfl_cls) nor an ATSS (bbox_head.atss_cls) head; the file's heads: "
        f"{heads[:5] or 'none'}. Only mmdetection GFL/ATSS ResNet-FPN detectors convert."
    )


def mmdet_num_classes(state: StateDict) -> int:
    """Number of classes of a GFL/ATSS head (its classification layer's output channels)."""
    return state[_CLS_KEYS[mmdet_architecture(state)]].shape[0]


def convert_mmdet_state_dict(state: StateDict, source: str = "checkpoint") -> Tuple[StateDict, Counter]:
    """
    Rename an mmdetection GFL/ATSS R-FPN state dict to ours; returns it and the mapped tensor count
    per part (backbone, neck, head, ignored). Keys no rule maps are an error naming `source`.
    """
    out, counts, unmapped = {}, Counter(), []
    for key, value in state.items():
        if _IGNORED.match(key):
            counts["ignored"] += 1
            continue
        mapped = _map_key(key)
        if mapped is None:
            unmapped.append(key)
            continue
        part, new_key = mapped
        out[new_key] = value
        counts[part] += 1
    if unmapped:
        raise ValueError(
            f"{source}: {len(unmapped)} keys are not part of an mmdetection GFL/ATSS ResNet-FPN "
            f"detector (no rule maps them), first: {unmapped[:5]}"
        )
    return out, counts


def convert_mmdet_checkpoint(
    path: str,
    output: str,
    *,
    depth: Optional[int] = None,
    meta_architecture: Optional[str] = None,
    num_classes: Optional[int] = None,
    trust_pickle: bool = False,
    log: Callable[[str], None] = print,
) -> Counter:
    """
    Convert the mmdetection checkpoint `path` and write it to `output` in Detectron2's format.
    `depth` / `meta_architecture` / `num_classes` (the target config's MODEL.RESNETS.DEPTH,
    META_ARCHITECTURE and MODEL.<arch>.NUM_CLASSES) are checked against the file when given; the
    output is written atomically. Returns the per-part counts.
    """
    log(f"reading {path}")
    state = read_mmdet_state_dict(path, trust_pickle=trust_pickle)
    arch, file_depth = mmdet_architecture(state), mmdet_resnet_depth(state)
    file_classes = mmdet_num_classes(state)
    log(f"found {arch} R-{file_depth} FPN, {file_classes} classes, {len(state)} tensors")
    if meta_architecture is not None and meta_architecture != arch:
        raise ValueError(
            f"{path} holds a {arch} detector but the config builds {meta_architecture}: use a "
            f"configs/mmdet/{arch}-*.yaml config"
        )
    if depth is not None and depth != file_depth:
        raise ValueError(
            f"{path} holds a ResNet-{file_depth} backbone but the config has MODEL.RESNETS.DEPTH "
            f"{depth}: use the config of the same depth"
        )
    if num_classes is not None and num_classes != file_classes:
        raise ValueError(
            f"{path} has {file_classes} classes but the config's MODEL.{arch}.NUM_CLASSES is "
            f"{num_classes}: set MODEL.{arch}.NUM_CLASSES {file_classes} (COCO: 80)"
        )
    converted, counts = convert_mmdet_state_dict(state, source=path)
    data = {"model": converted, "__author__": "mmdet->tid_d2", "matching_heuristics": False}
    atomic_write(output, lambda f: torch.save(data, f))
    summary = ", ".join(f"{part} {counts[part]}" for part in ("backbone", "neck", "head", "ignored"))
    log(f"wrote {output}: {len(converted)} tensors ({summary})")
    return counts
