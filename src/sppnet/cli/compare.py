"""``sppnet compare``: train the study's variants and write a comparison report."""

from __future__ import annotations

import argparse

from .common import ConsoleReporter, subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..config import STUDY_VARIANTS

    parser = subcommand(
        sub,
        "compare",
        help="train the study's variants and write a comparison report",
        description=(
            "Train the study's matrix (" + ", ".join(STUDY_VARIANTS) + "), each as a resumable run folder "
            "under --out, and write OUT/report.md and OUT/comparison.png. Finished variants are not retrained."
        ),
        epilog="examples:\n  sppnet compare flowers\n  sppnet compare flower_photos.tgz --epochs 5 --variants spp,flatten",
    )
    parser.add_argument("data", metavar="DATA")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each variant (default 20)")
    parser.add_argument("--out", default="runs/compare", help="folder of the variants' runs (default runs/compare)")
    parser.add_argument("--variants", help="comma-separated subset of the variants")
    parser.add_argument("--limit", type=int, help="only the first N images of each subset")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    parser.add_argument("--seed", type=int, default=123, help="seed (default 123)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..compare import compare

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    path = compare(args.data, args.out, args.epochs, variants, args.limit, args.device, args.seed, ConsoleReporter())
    print(path.read_text())
    print(f"report: {path}")
    return 0
