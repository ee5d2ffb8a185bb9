"""``sppnet predict``: classify image files with a run folder or an ONNX file."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from .common import PROG, subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "predict",
        help="classify image files with a trained run",
        description=(
            "Classify images (files or folders of them). Each image keeps its aspect ratio with its shorter "
            "side at the run's training size, unless --size warps it to SIZE x SIZE."
        ),
        epilog=(
            "examples:\n"
            "  sppnet predict runs/spp sunflower.jpg\n"
            "  sppnet predict runs/spp photos/ --top-k 3\n"
            "  sppnet predict runs/spp a.jpg b.png --json\n"
            "  sppnet predict runs/spp photos/ --csv > predictions.csv\n"
            "  sppnet predict --onnx spp.onnx sunflower.jpg"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder (omitted with --onnx)")
    parser.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="*")
    parser.add_argument("--onnx", metavar="FILE", help="classify with an exported ONNX model through onnxruntime instead of a run")
    parser.add_argument("--size", type=int, help="warp images to SIZE x SIZE instead")
    parser.add_argument("--top-k", type=int, default=None, help="print the K most likely classes")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror image (default: as the run validated)")
    parser.add_argument("--weights", default="best", choices=["best", "last"],
                        help="the run's best epoch's weights or its last's (default best)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="one JSON object per image: width/height are the model's view, file_width/file_height "
                             "the image's own size")
    output.add_argument("--csv", action="store_true",
                        help="a CSV table: path, class, confidence, then one column per class's probability")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images classified together, similar shapes zero-padded to the largest (default 32)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, SppnetError
    from ..predict import expand_images, load_predictor, shown

    if args.top_k is not None and args.top_k < 1:
        raise ConfigError(f"--top-k must be an integer >= 1, got {args.top_k}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be an integer >= 1, got {args.batch_size}")
    if args.onnx:
        images = [args.run_dir, *args.images]
    elif not args.images:
        raise ConfigError("give a run folder and at least one image: sppnet predict RUN IMAGE_OR_FOLDER...")
    else:
        images = args.images
    predictor = load_predictor(None if args.onnx else args.run_dir, args.onnx, args.weights, args.size,
                               args.device, args.flip)
    paths = expand_images(images)
    if not paths:
        raise ConfigError(f"no image files in {' '.join(map(str, images))}")
    failed = 0
    table = None
    if args.csv:
        table = csv.writer(sys.stdout, lineterminator="\n")
        table.writerow(["path", "class", "confidence", *predictor.class_names])
    for path, result in zip(paths, predictor.predict_many(paths, batch_size=args.batch_size)):
        if isinstance(result, SppnetError):
            print(f"{PROG}: error: {result}", file=sys.stderr)
            failed += 1
            continue
        if table is not None:
            table.writerow([str(path), result.class_name, f"{result.confidence:.6f}",
                            *(f"{p:.6f}" for p in result.probabilities.values())])
            continue
        if args.json:
            print(json.dumps(result.to_dict()))
            continue
        print(f"{shown(str(path))} ({result.width}x{result.height})")
        k = args.top_k or len(result.probabilities)
        probs = result.top(k) if args.top_k else list(result.probabilities.items())
        print("  " + "  ".join(f"{shown(name)}: {p:.4f}" for name, p in probs))
        print(f"  {result.sentence()}")
    return 1 if failed else 0
