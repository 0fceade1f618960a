"""Offline analyses of detection results (COCO error breakdown)."""
from .coco_errors import (  # noqa: F401
    AREA_RANGES,
    STAGES,
    ErrorAnalysis,
    analyze_errors,
    load_detections,
    load_ground_truth,
    plot_breakdown,
    save_breakdown_png,
    scope_curves,
    scope_masks,
    summarize,
    summary_markdown,
    write_report,
)
