"""
Pictures of TID's areas and importance maps (the TID paper's Figure 4): pure functions from arrays
to RGB uint8 images, drawn with matplotlib's Agg canvas (no pyplot, no global state).

Maps are per FPN level, [Hl, Wl], in the layout of `TID.areas`: location (i, j) of a level with
stride s is the anchor point ((j + offset) * s, (i + offset) * s) of the padded input image.
`level_to_image` maps them back onto an image by nearest location.
"""

import os
import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

__all__ = [
    "AREA_ALPHAS",
    "AREA_COLORS",
    "AREA_NAMES",
    "SHEET_MAPS",
    "area_fractions",
    "area_overlay",
    "area_sheet",
    "areas_for_image",
    "importance_heatmap",
    "level_to_image",
    "load_image",
    "tid_area_sheet_for_tensorboard",
]

AREA_NAMES = ("key", "weak", "other")
#: RGB of each area: key red, weak amber, other blue
AREA_COLORS: Dict[str, Tuple[int, int, int]] = {
    "key": (228, 26, 28),
    "weak": (255, 190, 0),
    "other": (40, 110, 200),
}
#: opacity of each area's colour over the image (other is faint: it is most of the image)
AREA_ALPHAS: Dict[str, float] = {"key": 0.6, "weak": 0.6, "other": 0.25}
#: the maps a sheet row needs (the keys of one level of `TID.areas`)
SHEET_MAPS = ("key", "weak", "other", "score_t", "score_s", "delta")
#: outline of GT boxes (green: no area colour)
GT_COLOR = "lime"
IMPORTANCE_CMAP = "inferno"
DELTA_CMAP = "RdBu_r"


def _numpy(x) -> np.ndarray:
    """A tensor (any device) or array-like as a numpy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_image(image_rgb) -> np.ndarray:
    image = _numpy(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(image.shape)}")
    return image


def load_image(path: str, format: str = "RGB") -> np.ndarray:
    """
    An image file as an HWC uint8 array in `format` (a PIL mode or "BGR"); a missing or unreadable
    file is an error naming it.
    """
    from detectron2.data.detection_utils import read_image

    if not os.path.isfile(path):
        raise FileNotFoundError(f"input image not found: {path}")
    try:
        return read_image(path, format=format)
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path} (corrupt or not an image?): {e}") from None


def level_to_image(
    level_map,
    image_hw: Tuple[int, int],
    stride: Optional[float] = None,
    input_hw: Optional[Tuple[int, int]] = None,
    offset: float = 0.0,
) -> np.ndarray:
    """
    Upsample one level's map to an image by nearest location.

    Args:
        level_map: [Hl, Wl] array or tensor, any dtype.
        image_hw: (H, W) of the image to draw on.
        stride: the level's stride in input pixels. None: the map spans the whole image (a plain
            nearest resize).
        input_hw: (h, w) of the un-padded network input the map was computed on (the test-time
            resized image); default image_hw (the image is the input itself).
        offset: anchor offset of the detector's anchor generator (locations at (i + offset) * s).

    Returns:
        [H, W] array of level_map's dtype: each image pixel takes the value of the location
        nearest to it in input coordinates.
    """
    m = _numpy(level_map)
    if m.ndim != 2:
        raise ValueError(f"level_to_image: expected a [Hl, Wl] map, got shape {tuple(m.shape)}")
    height, width = (int(v) for v in image_hw)
    hl, wl = m.shape
    if stride is None:
        rows = np.floor((np.arange(height) + 0.5) * hl / height).astype(np.int64)
        cols = np.floor((np.arange(width) + 0.5) * wl / width).astype(np.int64)
    else:
        h_in, w_in = (int(v) for v in (input_hw or image_hw))
        if (hl + 1) * stride < h_in or (wl + 1) * stride < w_in:
            raise ValueError(
                f"level_to_image: a {hl}x{wl} map of stride {stride} does not cover an input of "
                f"{h_in}x{w_in}; wrong stride or input size?"
            )
        y_in = (np.arange(height) + 0.5) * h_in / height
        x_in = (np.arange(width) + 0.5) * w_in / width
        rows = np.floor(y_in / stride - offset + 0.5).astype(np.int64)
        cols = np.floor(x_in / stride - offset + 0.5).astype(np.int64)
    rows = np.clip(rows, 0, hl - 1)
    cols = np.clip(cols, 0, wl - 1)
    return m[rows[:, None], cols[None, :]]


def _fit(mask, image_hw: Tuple[int, int]) -> np.ndarray:
    """A map at image size as is, anything else nearest-resized over the whole image."""
    m = _numpy(mask)
    return m if m.shape == tuple(image_hw) else level_to_image(m, image_hw)


def area_fractions(key, weak, other) -> Dict[str, float]:
    """Fraction of locations in each area: {"key", "weak", "other"} -> float (0 when empty)."""
    masks = [_numpy(m).astype(bool) for m in (key, weak, other)]
    total = max(masks[0].size, 1)
    return {name: float(m.sum()) / total for name, m in zip(AREA_NAMES, masks)}


def area_overlay(
    image_rgb,
    key,
    weak,
    other,
    colors: Mapping[str, Tuple[int, int, int]] = AREA_COLORS,
    alphas: Mapping[str, float] = AREA_ALPHAS,
) -> np.ndarray:
    """
    Key / weak / other areas painted over an image.

    Args:
        image_rgb: [H, W, 3] uint8 RGB.
        key, weak, other: bool masks [H, W] (or any 2-d size: nearest-resized over the image).
            Areas are expected disjoint; where they overlap, key wins over weak over other.
        colors, alphas: RGB and opacity of each area.

    Returns:
        [H, W, 3] uint8 RGB: pixel = (1 - a) * image + a * colour inside an area of opacity a.
    """
    image = _check_image(image_rgb)
    hw = image.shape[:2]
    out = image.astype(np.float32)
    for name, mask in (("other", other), ("weak", weak), ("key", key)):
        m = _fit(mask, hw).astype(bool)
        a = float(alphas[name])
        out[m] = (1.0 - a) * image[m].astype(np.float32) + a * np.asarray(colors[name], np.float32)
    return np.rint(out).clip(0, 255).astype(np.uint8)


def importance_heatmap(
    values,
    image_rgb=None,
    *,
    vmin: float = 0.0,
    vmax: float = 4.0,
    cmap: str = IMPORTANCE_CMAP,
    alpha: float = 0.65,
) -> np.ndarray:
    """
    A map as a colour-mapped heatmap, blended over an image if one is given.

    Args:
        values: [H, W] float map (with an image: any 2-d size, nearest-resized over it).
        image_rgb: optional [H, W, 3] uint8 RGB background.
        vmin, vmax: the value range mapped onto the colormap (values outside are clipped), fixed
            so that maps of different models and levels compare.
        cmap: a matplotlib colormap name.
        alpha: opacity of the heatmap over the image.

    Returns:
        [H, W, 3] uint8 RGB.
    """
    if vmax <= vmin:
        raise ValueError(f"importance_heatmap: vmax ({vmax}) must exceed vmin ({vmin})")
    if image_rgb is not None:
        image = _check_image(image_rgb)
        v = _fit(values, image.shape[:2])
    else:
        v = _numpy(values)
        if v.ndim != 2:
            raise ValueError(f"importance_heatmap: expected a [H, W] map, got {tuple(v.shape)}")
    norm = Normalize(vmin=vmin, vmax=vmax, clip=True)
    colour = colormaps[cmap](norm(v.astype(np.float64)))[..., :3] * 255.0
    if image_rgb is None:
        return np.rint(colour).astype(np.uint8)
    out = (1.0 - alpha) * image.astype(np.float64) + alpha * colour
    return np.rint(out).clip(0, 255).astype(np.uint8)


def areas_for_image(
    areas: Mapping[str, Mapping[str, object]], index: int = 0
) -> Tuple[List[str], List[Dict[str, np.ndarray]]]:
    """
    One image's maps from `TID.areas` output ({level: {map: [N, Hl, Wl]}}): level names in level
    order and, per level, {map: [Hl, Wl] numpy array}.
    """
    names = list(areas)
    maps = [{k: _numpy(v[index]) for k, v in areas[lvl].items()} for lvl in names]
    return names, maps


def _stride_from_name(name: str) -> Optional[int]:
    """The project's level names are p<k> for stride 2**k (see `level_names`)."""
    match = re.fullmatch(r"p(\d+)", name)
    return 2 ** int(match.group(1)) if match else None


def _draw_boxes(ax, boxes: Optional[np.ndarray]) -> None:
    for x1, y1, x2, y2 in boxes if boxes is not None else ():
        ax.add_patch(
            Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=GT_COLOR, linewidth=0.8)
        )


def _render(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


_COLUMNS = (
    "areas",
    "teacher importance $S^T$",
    "student importance $S^S$",
    "$\\Delta = S^T - S^S$",
)


class _SheetLayout:
    """Fixed positions (inches, converted to figure fractions) of a sheet's 4 x rows image cells,
    its row labels, column titles, area legend and colour bars (faster than a layout engine)."""

    LEFT, RIGHT, GAP, TITLE, HEADER, FOOTER = 0.45, 0.08, 0.08, 0.3, 0.25, 0.55

    def __init__(self, rows: int, cell_w: float, cell_h: float, title: bool):
        self.cell_w, self.cell_h = cell_w, cell_h
        self.top = self.HEADER + (self.TITLE if title else 0.0)
        self.grid_h = rows * cell_h + (rows - 1) * self.GAP
        width = self.LEFT + 4 * cell_w + 3 * self.GAP + self.RIGHT
        self.size = (width, self.top + self.grid_h + self.FOOTER)

    def _rect(self, x: float, y: float, w: float, h: float) -> List[float]:
        """[left, bottom, width, height] in figure fractions of a box at (x, y) in from top-left."""
        fw, fh = self.size
        return [x / fw, 1.0 - (y + h) / fh, w / fw, h / fh]

    def _x(self, col: int) -> float:
        return self.LEFT + col * (self.cell_w + self.GAP)

    def cell(self, row: int, col: int) -> List[float]:
        y = self.top + row * (self.cell_h + self.GAP)
        return self._rect(self._x(col), y, self.cell_w, self.cell_h)

    def colorbar(self, first: int, last: int) -> List[float]:
        """A thin bar under columns first..last, slightly inset."""
        inset = 0.1 * self.cell_w
        width = self._x(last) + self.cell_w - self._x(first) - 2 * inset
        return self._rect(self._x(first) + inset, self.top + self.grid_h + 0.1, width, 0.1)

    def legend_anchor(self) -> Tuple[float, float]:
        fw, fh = self.size
        return ((self._x(0) + self.cell_w / 2) / fw, 1.0 - (self.top + self.grid_h + 0.2) / fh)


def area_sheet(
    image_rgb,
    per_level_maps: Sequence[Mapping[str, object]],
    level_names: Sequence[str],
    *,
    strides: Optional[Sequence[float]] = None,
    input_hw: Optional[Tuple[int, int]] = None,
    offset: float = 0.0,
    gt_boxes=None,
    score_max: float = 4.0,
    title: Optional[str] = None,
    cell_inches: float = 2.6,
    dpi: int = 100,
) -> np.ndarray:
    """
    The TID paper's Figure 4 layout: one row per level; columns: areas (key / weak / other),
    teacher importance Score^T, student importance Score^S, delta = Score^T - Score^S.

    Args:
        image_rgb: [H, W, 3] uint8 RGB, the image to draw on.
        per_level_maps: per level, a mapping with the `SHEET_MAPS` keys, each [Hl, Wl] (arrays or
            tensors; e.g. `areas_for_image(TID.areas(...))[1]`).
        level_names: a name per level (row labels).
        strides: per level stride; default 2**k from level names "p<k>" (else a plain resize).
        input_hw, offset: see `level_to_image` (input_hw default: the image is the input).
        gt_boxes: optional [M, 4] XYXY boxes in image pixels, outlined in every cell.
        score_max: top of the importance colour scale (DIEM's hi**2); delta spans +-score_max.
        title: optional figure title.
        cell_inches, dpi: width of one cell and resolution.

    Returns:
        [h, w, 3] uint8 RGB sheet. Row labels give each area's fraction of the level's locations.
    """
    image = _check_image(image_rgb)
    if len(per_level_maps) != len(level_names) or not level_names:
        raise ValueError(
            f"area_sheet: {len(per_level_maps)} levels of maps for {len(level_names)} level names"
        )
    if strides is None:
        strides = [_stride_from_name(n) for n in level_names]
    if len(strides) != len(level_names):
        raise ValueError(f"area_sheet: {len(strides)} strides for {len(level_names)} levels")
    boxes = None if gt_boxes is None else _numpy(gt_boxes).reshape(-1, 4)
    hw = image.shape[:2]
    grey = np.repeat(image.astype(np.float32).mean(axis=2, keepdims=True), 3, axis=2)
    grey = np.rint(grey).astype(np.uint8)
    rows = len(level_names)
    layout = _SheetLayout(rows, cell_inches, cell_inches * hw[0] / hw[1], bool(title))
    fig = Figure(figsize=layout.size, dpi=dpi)
    for r, (name, maps, stride) in enumerate(zip(level_names, per_level_maps, strides)):
        missing = [k for k in SHEET_MAPS if k not in maps]
        if missing:
            raise KeyError(f"area_sheet: level {name} lacks maps {missing}; needs {SHEET_MAPS}")
        up = {k: level_to_image(maps[k], hw, stride, input_hw, offset) for k in SHEET_MAPS}
        frac = area_fractions(maps["key"], maps["weak"], maps["other"])
        cells = [
            area_overlay(grey, up["key"], up["weak"], up["other"]),
            importance_heatmap(up["score_t"], grey, vmin=0.0, vmax=score_max),
            importance_heatmap(up["score_s"], grey, vmin=0.0, vmax=score_max),
            importance_heatmap(up["delta"], grey, vmin=-score_max, vmax=score_max, cmap=DELTA_CMAP),
        ]
        for c, cell in enumerate(cells):
            ax = fig.add_axes(layout.cell(r, c))
            ax.imshow(cell, interpolation="nearest")
            _draw_boxes(ax, boxes)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_COLUMNS[c], fontsize=9)
        label = f"{name}" + (f" (stride {stride:g})" if stride else "")
        fig.axes[-4].set_ylabel(
            f"{label}\nK {frac['key']:.1%}  W {frac['weak']:.1%}  O {frac['other']:.1%}",
            fontsize=8,
        )
    handles = [Patch(facecolor=np.asarray(AREA_COLORS[a]) / 255.0, label=a) for a in AREA_NAMES]
    if boxes is not None:
        handles.append(Patch(facecolor="none", edgecolor=GT_COLOR, label="GT"))
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=layout.legend_anchor(),
        ncol=len(handles),
        fontsize=8,
        frameon=False,
        handlelength=1.2,
        columnspacing=0.8,
    )
    for first, last, (vmin, vmax, cmap) in (
        (1, 2, (0.0, score_max, IMPORTANCE_CMAP)),
        (3, 3, (-score_max, score_max, DELTA_CMAP)),
    ):
        cax = fig.add_axes(layout.colorbar(first, last))
        mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
        fig.colorbar(mappable, cax=cax, orientation="horizontal").ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 - 0.08 / layout.size[1], va="top")
    return _render(fig)


def tid_area_sheet_for_tensorboard(
    image,
    areas: Mapping[str, Mapping[str, object]],
    *,
    index: int = 0,
    input_format: str = "BGR",
    gt_boxes=None,
    strides: Optional[Sequence[float]] = None,
    offset: float = 0.0,
    score_max: float = 4.0,
    title: Optional[str] = None,
) -> np.ndarray:
    """
    An `area_sheet` of one training image for `EventStorage.put_image`.

    Args:
        image: the model input of that image, `batched_inputs[index]["image"]`: [3, h, w] tensor or
            array in `input_format` (the un-padded, resized input the maps were computed on).
        areas: `TID.areas(teacher_out, student_out, targets)` of the batch.
        index: which image of the batch.
        input_format: "BGR" or "RGB" (cfg.INPUT.FORMAT).
        gt_boxes: optional [M, 4] XYXY input-pixel boxes (`targets[index].gt_boxes.tensor`).
        strides: per level; default from the level names ("p3" -> 8).
        offset: the detector's anchor offset (`anchor_generator.offset`).
        score_max: top of the importance scale (DIEM's hi**2).

    Returns:
        [3, H, W] uint8 RGB.
    """
    img = _numpy(image)
    if img.ndim != 3 or img.shape[0] != 3:
        raise ValueError(f"expected the [3, h, w] model input image, got {tuple(img.shape)}")
    img = np.ascontiguousarray(img.transpose(1, 2, 0))
    if input_format == "BGR":
        img = img[..., ::-1]
    elif input_format != "RGB":
        raise ValueError(f"input_format must be 'BGR' or 'RGB', got '{input_format}'")
    img = np.clip(img, 0, 255).astype(np.uint8)
    names, maps = areas_for_image(areas, index)
    sheet = area_sheet(
        img,
        maps,
        names,
        strides=strides,
        offset=offset,
        gt_boxes=gt_boxes,
        score_max=score_max,
        title=title,
        dpi=72,
    )
    return np.ascontiguousarray(sheet.transpose(2, 0, 1))
