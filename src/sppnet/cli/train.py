"""``sppnet train``: its options are made from :class:`sppnet.config.TrainConfig`'s fields."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from .common import ConsoleReporter, int_list, subcommand

__all__ = ["add_parser", "run"]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_fields(groups: dict[str, argparse._ArgumentGroup]) -> None:
    """One option per TrainConfig field marked for the command line, in its section's group, with
    the field's help and default (every option defaults to None: only what is given overrides the
    preset)."""
    from ..config import TrainConfig, cli_fields

    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in cli_fields():
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            shown = "on" if default else "off"
        else:
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help = f.metadata["help"] if "(default" in f.metadata["help"] else f"{f.metadata['help']} (default {shown})"
        group = groups[f.metadata["section"]]
        if hint is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=help)
            continue
        args = typing.get_args(hint)
        base = next((a for a in args if a is not type(None)), hint) if args and type(None) in args else hint
        if typing.get_origin(base) is tuple:
            kind, metavar = int_list, "N,N,..."
        else:
            kind, metavar = base, None
        group.add_argument(_flag(f.name), type=kind, default=None, metavar=metavar, help=help)


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "train",
        help="train a model and write a run folder",
        description="Train a CNN with an SPP (or Flatten, or GAP) head: the study's network, or a torchvision or timm "
                    "network (sppnet models lists them). The defaults are the study's setup.",
        epilog=(
            "examples:\n"
            "  sppnet train flowers\n"
            "  sppnet train ../shared/datasets/flower_photos.tgz --out runs/spp\n"
            "  sppnet train photos/ --native 180 --epochs 30 --out runs/native\n"
            "  sppnet train photos/ --out runs/native --resume --epochs 40\n"
            "  sppnet train flowers --model flatten --out runs/flatten\n"
            "  sppnet train photos/ --model torchvision:resnet18 --pretrained resnet18.safetensors \\\n"
            "      --freeze-backbone --native 128 --out runs/resnet18"
        ),
    )
    from ..config import SECTIONS

    parser.add_argument("data", metavar="DATA", help="folder of class subfolders, archive (.tgz/.tar.gz/.tar/.zip) or 'flowers'")
    groups = {section: parser.add_argument_group(f"{section} options") for section in SECTIONS}
    sizes = groups["sizes"].add_mutually_exclusive_group()
    sizes.add_argument("--size", type=int, help="warp images to SIZE x SIZE (default 180)")
    sizes.add_argument("--sizes", help="multi-size training, one size per epoch, e.g. 180,224")
    sizes.add_argument("--size-range", help="a size drawn per epoch from LOW:HIGH, e.g. 180:224")
    sizes.add_argument("--native", type=int, help="keep aspect ratios, shorter side NATIVE, padded batches")
    sizes.add_argument("--progressive", metavar="LOW:HIGH",
                       help="progressive resizing: --native with a shorter side growing from LOW in the first "
                            "epoch to HIGH in the last, e.g. 64:96; validated and tested at HIGH")
    sizes.add_argument("--native-range", metavar="LOW:HIGH",
                       help="scale augmentation: --native with a shorter side drawn for each batch from LOW:HIGH, "
                            "e.g. 96:192; validated and tested at HIGH")
    _add_config_fields(groups)
    run_group = groups["run"]
    run_group.add_argument("--out", default=None, help="run folder (default runs/MODEL, or runs/PRESET)")
    run_group.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    run_group.add_argument("--backend", choices=["gloo", "nccl"], help="distributed backend under torchrun (default: gloo on CPU, nccl on CUDA)")
    run_group.add_argument("--store-dir", metavar="DIR",
                        help="decode the images into memory-mapped files in DIR instead of memory, for datasets "
                             "larger than memory (the files are removed once mapped; default: memory, or the run "
                             "folder when the decoded images would not fit in the memory available)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..config import TrainConfig, cli_fields
    from ..sizing import parse_policy
    from ..train import train

    names = [f.name for f in cli_fields() if f.name not in ("preset",)]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    given = (args.size, args.sizes, args.size_range, args.native, args.progressive, args.native_range)
    if any(v is not None for v in given):
        policy = parse_policy(args.size, args.sizes, args.size_range, args.native, args.progressive,
                              native_range=args.native_range).to_config()
        if policy["kind"] == "progressive":
            del policy["epochs"]  # the run's epochs (TrainConfig fills them in)
        overrides["policy"] = policy
    if args.resume:
        _check_resume_options(args, overrides)
    preset = args.preset or "study"
    config = TrainConfig.from_preset(preset, data=args.data, **overrides)
    out = args.out if args.out is not None else f"runs/{config.model.replace(':', '-') if preset == 'study' else preset}"
    # --resume continues for the run's own number of epochs unless --epochs is given.
    config = dataclasses.replace(config, out=out, epochs=args.epochs if args.resume else config.epochs)
    metrics = train(config, resume=args.resume, reporter=ConsoleReporter(), backend=args.backend,
                    store_dir=args.store_dir)
    if metrics:
        print(f"best val_accuracy {metrics['best']['val_accuracy']:.4f} at epoch {metrics['best']['epoch']}; "
              f"run folder: {config.out}")
    return 0


def _check_resume_options(args: argparse.Namespace, overrides: dict) -> None:
    """--resume continues a run with its own data and options: refuse an option or a DATA that
    differs from the run's (only --epochs and --device may change) instead of ignoring it."""
    from pathlib import Path

    from ..errors import ConfigError
    from ..runs import RunFolder
    from ..sizing import policy_from_config

    run = RunFolder(args.out if args.out is not None else "runs/spp")
    if not run.exists():
        return  # train() says there is nothing to resume
    stored = run.run_config().train
    changed = []
    for name, value in sorted(overrides.items()):
        if name in ("epochs", "device"):
            continue
        if name == "policy":
            if value["kind"] == "progressive":
                value = {"epochs": stored.policy.get("epochs", 1), **value}
            if policy_from_config(value) != stored.size_policy():
                changed.append(f"--size/--sizes/--size-range/--native/--progressive/--native-range "
                               f"({stored.size_policy().describe()} in the run)")
        elif value != getattr(stored, name):
            changed.append(f"--{name.replace('_', '-')} ({getattr(stored, name)!r} in the run)")
    if args.preset is not None and args.preset != stored.preset:
        changed.append(f"--preset ({stored.preset} in the run)")
    if changed:
        raise ConfigError(f"--resume continues {run.path} with its own options; {', '.join(changed)} cannot change "
                          "(only --epochs and --device can); start a new run with another --out instead")
    source = Path(args.data).expanduser()
    same = str(args.data) == stored.data or (
        source.exists() and str(source.resolve()) == str(Path(stored.data).expanduser().resolve()))
    if not same:
        raise ConfigError(f"--resume: {run.path} was trained on {stored.data}, not {args.data}; give the same DATA, "
                          "or start a new run with another --out")
