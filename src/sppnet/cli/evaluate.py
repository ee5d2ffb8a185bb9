"""``sppnet evaluate``: a run's metrics and confusion matrix on a validation split."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import int_list, subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "evaluate",
        help="evaluate a run on its validation set or any folder",
        description=(
            "Loss, accuracy, per-class precision/recall/F1, calibration (ECE and a reliability diagram) and a "
            "confusion matrix (text and PNG) of a run on a validation split. Views: --size S (warped), --native S (each image whole, "
            "SPP-net's full-image view), --scales S1,S2,... (softmax averaged over sizes)."
        ),
        epilog=(
            "examples:\n"
            "  sppnet evaluate runs/spp\n"
            "  sppnet evaluate runs/spp --native 180\n"
            "  sppnet evaluate runs/spp --scales 180,224,256 --json\n"
            "  sppnet evaluate runs/spp photos/test"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder")
    parser.add_argument("data", metavar="DIR", nargs="?",
                        help="score every image of this folder or archive of class subfolders (its test/ in a "
                             "train/val/test layout); default: the run's own validation set")
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--size", type=int, help="warp images to SIZE x SIZE")
    views.add_argument("--native", type=int, help="whole images, shorter side NATIVE")
    views.add_argument("--scales", type=int_list, help="average the softmax over sizes, e.g. 180,224,256")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's softmax with its mirror image's (default: as the run validated)")
    parser.add_argument("--weights", default="best", choices=["best", "last"], help="which weights (default best)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    parser.add_argument("--limit", type=int, help="only the first N validation images")
    parser.add_argument("--confusion-png", help="where to draw the confusion matrix (default RUN/confusion.png)")
    parser.add_argument("--reliability-png",
                        help="where to draw the reliability diagram (default RUN/reliability.png)")
    parser.add_argument("--calibrated", action=argparse.BooleanOptionalAction, default=True,
                        help="use the run's fitted temperature, when it has one (default: yes)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate import evaluate_run

    png = Path(args.confusion_png) if args.confusion_png else Path(args.run_dir) / "confusion.png"
    reliability = Path(args.reliability_png) if args.reliability_png else Path(args.run_dir) / "reliability.png"
    evaluation = evaluate_run(args.run_dir, args.data, args.size, args.native, args.scales, args.weights,
                              args.batch_size, args.device, args.limit, args.flip, confusion_png=png,
                              reliability_png=reliability, calibrated=args.calibrated)
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
    else:
        temperature = evaluation.extra["temperature"]
        calibration = "uncalibrated" if temperature is None else f"temperature {temperature:.3f}"
        print(f"scored {evaluation.count} images: {evaluation.extra['data']}")
        print(f"view: {evaluation.extra['view']}, {args.weights} weights, {calibration}")
        print(evaluation.report())
        print(f"\nconfusion matrix picture: {png}\nreliability diagram: {reliability}")
    for reason in evaluation.extra["skipped_files"]:
        print(f"skipped: {reason}", file=sys.stderr)
    return 0
