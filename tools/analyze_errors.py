#!/usr/bin/env python
"""
COCO error analysis (Hoiem-style PR breakdown: C75, C50, Loc, Sim, Oth, BG, FN) of one detection
file, or two side by side (e.g. baseline vs distilled).

    python tools/analyze_errors.py --gt ANN.json --dt coco_instances_results.json --output DIR
    python tools/analyze_errors.py --gt ANN.json --dt base.json --dt2 tid.json
        --names baseline distilled --areas all small medium large --output DIR   (one line)

Writes DIR/<scope>-<area>.png (scope: overall, supercategory-<name>), DIR/summary.md and
DIR/summary.json. The library is `tid_d2.analysis.coco_errors`.
"""
import argparse
import logging
import sys

from tid_d2.analysis.coco_errors import (
    AREA_RANGES,
    analyze_errors,
    load_detections,
    load_ground_truth,
    write_report,
)

logger = logging.getLogger("analyze_errors")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gt", required=True, help="COCO-format ground-truth json")
    p.add_argument("--dt", required=True, help="COCO results json (coco_instances_results.json)")
    p.add_argument("--dt2", help="a second results json, compared side by side with --dt")
    p.add_argument("--names", nargs="+", help="display names: one, or two with --dt2 "
                   "(default: 'detections', or 'baseline distilled')")
    p.add_argument("--areas", nargs="+", default=["all"], choices=list(AREA_RANGES),
                   help="COCO area ranges to analyze (default: all)")
    p.add_argument("--max-dets", type=int, default=100, help="detections kept per image and class (default: 100, as COCO)")
    p.add_argument("--output", required=True, help="output directory")
    args = p.parse_args(argv)
    n_models = 2 if args.dt2 else 1
    if args.names is None:
        args.names = ["baseline", "distilled"] if args.dt2 else ["detections"]
    if len(args.names) != n_models or len(set(args.names)) != n_models:
        p.error(f"--names needs {n_models} distinct name(s) for {n_models} detection file(s), "
                f"got {args.names}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    gt = load_ground_truth(args.gt)
    files = [args.dt] + ([args.dt2] if args.dt2 else [])
    analyses = {}
    for name, path in zip(args.names, files):
        logger.info("Analyzing %s (%s) ...", name, path)
        dets = load_detections(path, gt, gt_path=args.gt)
        analyses[name] = analyze_errors(gt, dets, areas=args.areas, max_dets=args.max_dets)
    report = write_report(args.output, analyses, dict(zip(args.names, files)))
    print(report["summary_md"].read_text())
    logger.info("Wrote %d plots, %s and %s", len(report["pngs"]), report["summary_md"],
                report["summary_json"])
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
