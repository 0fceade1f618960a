"""Pictures for researchers: TID's key / weak / other areas and importance maps, and the hook that
puts them into TensorBoard. The training core never imports this package (matplotlib)."""

from .hooks import TIDAreasHook, visualization_hooks
from .tid_areas import (  # noqa: F401
    AREA_ALPHAS,
    AREA_COLORS,
    AREA_NAMES,
    SHEET_MAPS,
    area_fractions,
    area_overlay,
    area_sheet,
    areas_for_image,
    importance_heatmap,
    level_to_image,
    load_image,
    tid_area_sheet_for_tensorboard,
)
