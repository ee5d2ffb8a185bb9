"""``sppnet data`` and ``sppnet models``: look at a dataset, list the models."""

from __future__ import annotations

import argparse

from .common import download_progress, subcommand

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "data",
        help="summarise a dataset and its training/validation split",
        description=(
            "Scan a dataset (a folder of class subfolders, an archive of one, or 'flowers'), split it "
            "as Keras' image_dataset_from_directory does, and print counts, image sizes and any "
            "unreadable files."
        ),
        epilog=(
            "examples:\n"
            "  sppnet data ../shared/datasets/flower_photos.tgz\n"
            "  sppnet data photos/ --val-split 0.1 --seed 7\n"
            "  sppnet data flowers --list val > val_files.txt"
        ),
    )
    parser.add_argument("data", metavar="DATA", help="folder, archive (.tgz/.tar.gz/.tar/.zip) or 'flowers'")
    parser.add_argument("--val-split", type=float, default=0.2, help="validation fraction (default 0.2)")
    parser.add_argument("--seed", type=int, default=123, help="split seed (default 123)")
    parser.add_argument("--list", choices=["train", "val"], help="print only the files of that subset, in split order")
    parser.set_defaults(run=run_data)

    parser = subcommand(
        sub,
        "models",
        help="list the models and network families",
        description="List the study's models with their parameter counts for 5 classes, and the network "
                    "families (torchvision:NAME, timm:NAME) with examples and whether they are installed.",
        epilog="examples:\n  sppnet models\n  sppnet train photos/ --model timm:mobilenetv3_small_100 --native 128",
    )
    parser.set_defaults(run=run_models)

    parser = subcommand(
        sub,
        "presets",
        help="compare the named training recipes",
        description="The presets of sppnet train --preset: network, parameters, sizes, epochs, minutes on two CPU "
                    "cores and accuracy on the flowers (docs/accuracy.md), and when to pick each.",
        epilog="examples:\n  sppnet presets\n  sppnet train photos/ --preset fast --out runs/fast",
    )
    parser.set_defaults(run=run_presets)


def run_data(args: argparse.Namespace) -> int:
    from .. import data

    root = data.locate(args.data, progress=download_progress())
    dataset = data.scan(root)
    train, val = data.split(dataset, args.val_split, args.seed)
    if args.list:
        for name in (train if args.list == "train" else val).files:
            print(name)
        return 0
    print(data.summarize(dataset, train, val))
    return 0


def run_models(args: argparse.Namespace) -> int:
    import importlib.util

    from ..models import build_model, count_parameters, list_families, list_models

    print("The study's CNN (--model NAME):")
    for name in list_models():
        model = build_model(name)
        print(f"  {name:<8} {count_parameters(model):>10,} parameters  {model.pool}")
    print("Network families with an SPP head (--model FAMILY:NAME):")
    for family, (what, examples) in list_families().items():
        installed = importlib.util.find_spec(family) is not None
        state = "installed" if installed else "not installed: pip install 'sppnet[backbones]'"
        print(f"  {family}:NAME  {what}; {state}")
        print(f"      e.g. {', '.join(f'{family}:{e}' for e in examples)}")
    return 0


def preset_table() -> list[list[str]]:
    """One row per preset: name, network, parameters (5 classes), sizes, epochs, minutes, accuracy,
    when to pick it."""
    from ..config import PRESET_FACTS, PRESETS, TrainConfig
    from ..models import count_parameters

    rows = [["preset", "network", "parameters", "sizes", "epochs", "minutes (2 cores)", "flowers accuracy", "pick it"]]
    for name in PRESETS:
        config = TrainConfig.from_preset(name)
        network = f"{config.model} {'-'.join(map(str, config.widths))}" + (" + batch norm" if config.batch_norm else "")
        parameters = count_parameters(config.model_spec(5).build())
        facts = PRESET_FACTS[name]
        rows.append([name, network, f"{parameters:,}", config.size_policy().describe(), str(config.epochs),
                     facts["minutes"], facts["accuracy"], facts["pick"]])
    return rows


def run_presets(args: argparse.Namespace) -> int:
    rows = preset_table()
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
