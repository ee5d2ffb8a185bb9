"""``sppnet explain``: where in each whole photo the network looked (heat map and SPP bins)."""

from __future__ import annotations

import argparse
import json
import sys

from .common import PROG, subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "explain",
        help="show where in each image the network looked (Grad-CAM and the SPP bins)",
        description=(
            "For each image, write OUT/NAME.explain.png: the photo at its own aspect ratio with a heat map of the "
            "class's evidence (Grad-CAM on the last conv block) over it, and beside it each SPP level as a grid "
            "shaded by its bins' share of the evidence; the title is the prediction's sentence."
        ),
        epilog=(
            "examples:\n"
            "  sppnet explain runs/spp sunflower.jpg\n"
            "  sppnet explain runs/spp photos/ --top-k 3 --out maps\n"
            "  sppnet explain runs/spp rose.jpg --class tulips --json"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder")
    parser.add_argument("images", metavar="IMAGE_OR_FOLDER", nargs="+")
    parser.add_argument("--class", dest="target", metavar="NAME", help="explain this class instead of the predicted one")
    parser.add_argument("--top-k", type=int, default=1, help="explain the K likeliest classes, one row each (default 1)")
    parser.add_argument("--out", default="explanations", help="folder for the pictures (default explanations)")
    parser.add_argument("--size", type=int, help="warp images to SIZE x SIZE instead of keeping their aspect ratio")
    parser.add_argument("--weights", default="best", choices=["best", "last"],
                        help="the run's best epoch's weights or its last's (default best)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError, SppnetError
    from ..explain import explain_files
    from ..predict import expand_images, load_predictor

    predictor = load_predictor(args.run_dir, None, args.weights, args.size, args.device, flip=False)
    if args.target is not None and args.target not in predictor.class_names:
        raise ConfigError(f"--class {args.target!r} is not one of the run's classes: {', '.join(predictor.class_names)}")
    paths = expand_images(args.images)
    if not paths:
        raise ConfigError(f"no image files in {' '.join(args.images)}")
    failed = 0
    for result in explain_files(predictor, paths, args.out, args.top_k, args.target):
        if isinstance(result, SppnetError):
            print(f"{PROG}: error: {result}", file=sys.stderr)
            failed += 1
            continue
        path, explanations, picture = result
        if args.json:
            first = explanations[0]
            print(json.dumps({"image": str(path), "picture": str(picture), "probabilities": first.prediction.probabilities,
                              "explanations": [e.to_dict() for e in explanations]}))
        else:
            print(f"{path}: {explanations[0].prediction.sentence()}")
            print(f"  wrote {picture}")
    return 1 if failed else 0
