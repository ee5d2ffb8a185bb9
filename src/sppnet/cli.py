"""The ``sppnet`` command: parses arguments, calls the library, prints.

Each subcommand lives in its own ``_add_<name>`` / ``_run_<name>`` pair. sppnet's own errors
(:class:`~sppnet.errors.SppnetError`) are printed as one line and exit with status 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ._version import __version__
from .errors import ConfigError, SppnetError

PROG = "sppnet"


def _subcommand(sub: argparse._SubParsersAction, name: str, help: str, description: str, epilog: str) -> argparse.ArgumentParser:
    """A subcommand parser with a help line, a description and an epilog of examples."""
    return sub.add_parser(name, help=help, description=description, epilog=epilog,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_models(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        sub,
        "models",
        help="list the model family and parameter counts",
        description="List the registered models with their parameter counts for 5 classes.",
        epilog="example:\n  sppnet models",
    )
    parser.set_defaults(run=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from .models import build_model, count_parameters, list_models

    for name in list_models():
        model = build_model(name)
        print(f"{name:<8} {count_parameters(model):>10,} parameters  {model.pool}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
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
    parser.set_defaults(run=_run_data)


def _run_data(args: argparse.Namespace) -> int:
    from . import data

    root = data.locate(args.data, progress=_download_progress())
    dataset = data.scan(root)
    train, val = data.split(dataset, args.val_split, args.seed)
    if args.list:
        for name in (train if args.list == "train" else val).files:
            print(name)
        return 0
    summary = data.summarize(dataset, train, val)
    print(summary)
    return 0


def _download_progress():
    """A progress callback for downloads: a bar on a terminal, nothing otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        frac = min(done / total, 1.0) if total else 0.0
        bar = "=" * int(frac * 30)
        print(f"\rdownloading [{bar:<30}] {done / 1e6:7.1f}/{total / 1e6:.1f} MB", end="", file=sys.stderr)
        if done >= total:
            print(file=sys.stderr)

    return show


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,4, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


class ConsoleReporter:
    """Prints training progress: a bar on a terminal, one Keras-style line per epoch."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.wants_steps = self.stream.isatty()
        self._bar_shown = False

    def message(self, text: str) -> None:
        self._clear()
        print(text, file=self.stream, flush=True)

    def step(self, epoch, epochs, step, steps, loss, accuracy, elapsed) -> None:
        eta = elapsed / step * (steps - step)
        filled = int(30 * step / steps)
        bar = "=" * filled + (">" if filled < 30 else "") + "." * max(0, 29 - filled)
        print(f"\rEpoch {epoch}/{epochs} {step}/{steps} [{bar}] ETA {eta:4.0f}s - loss: {loss:.4f} - accuracy: {accuracy:.4f}",
              end="", file=self.stream, flush=True)
        self._bar_shown = True

    def epoch(self, line: str) -> None:
        self.message(line)

    def _clear(self) -> None:
        if self._bar_shown:
            print("\r\033[K", end="", file=self.stream)
            self._bar_shown = False


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        sub,
        "train",
        help="train a model and write a run folder",
        description="Train a CNN with an SPP (or Flatten, or GAP) head. The defaults are the study's best setup.",
        epilog=(
            "examples:\n"
            "  sppnet train flowers\n"
            "  sppnet train ../shared/datasets/flower_photos.tgz --out runs/spp\n"
            "  sppnet train photos/ --native 180 --epochs 30 --out runs/native\n"
            "  sppnet train photos/ --out runs/native --resume --epochs 40\n"
            "  sppnet train flowers --model flatten --out runs/flatten"
        ),
    )
    parser.add_argument("data", metavar="DATA", help="folder of class subfolders, archive (.tgz/.tar.gz/.tar/.zip) or 'flowers'")
    parser.add_argument("--out", default=None, help="run folder (default runs/MODEL)")
    parser.add_argument("--preset", default="study",
                        help="named recipe: study (default, the study's setup), study-plus, best; options given "
                             "explicitly override the preset's values")
    parser.add_argument("--model", help="spp, flatten or gap (default spp)")
    parser.add_argument("--levels", type=_int_list, help="SPP levels (default 1,2,4)")
    parser.add_argument("--pool", help="SPP pooling: max or avg (default max)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--size", type=int, help="warp images to SIZE x SIZE (default 180)")
    sizes.add_argument("--sizes", help="multi-size training, one size per epoch, e.g. 180,224")
    sizes.add_argument("--size-range", help="a size drawn per epoch from LOW:HIGH, e.g. 180:224")
    sizes.add_argument("--native", type=int, help="keep aspect ratios, shorter side NATIVE, padded batches")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None, help="random flip, rotation, zoom (default on)")
    parser.add_argument("--rotation", type=float, help="augmentation: largest rotation in turns (default 0.1)")
    parser.add_argument("--zoom", type=float, help="augmentation: largest relative zoom (default 0.1)")
    parser.add_argument("--dropout", type=float, help="dropout rate (default 0.2)")
    parser.add_argument("--widths", type=_int_list, help="conv block widths (default 16,32,64)")
    parser.add_argument("--hidden", type=int, help="dense layer units (default 128)")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="batch norm after each conv (default off)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 20, or the preset's: best trains 50; with --resume, the run's own)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 32)")
    parser.add_argument("--lr", type=float, help="learning rate (default 0.001)")
    parser.add_argument("--schedule", help="learning rate schedule: constant or cosine (default constant)")
    parser.add_argument("--warmup-epochs", type=int, help="linear learning-rate warm-up (default 0)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay; 0 is Adam (default 0)")
    parser.add_argument("--label-smoothing", type=float, help="label smoothing (default 0)")
    parser.add_argument("--flip-test", action=argparse.BooleanOptionalAction, default=None,
                        help="validate on each image and its mirror image (default off)")
    parser.add_argument("--val-split", type=float, help="validation fraction (default 0.2)")
    parser.add_argument("--holdout", type=float,
                        help="validate on this share of the training split instead, for tuning (default 0)")
    parser.add_argument("--seed", type=int, help="seed of the split, initialisation, shuffling, augmentation (default 123)")
    parser.add_argument("--split-seed", type=int, help="seed of the split alone, to vary the rest on one split (default: --seed)")
    parser.add_argument("--precision", help="fp32 (default) or bf16 (autocast; fast where the CPU or GPU has bf16 units)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last finished epoch")
    parser.add_argument("--backend", choices=["gloo", "nccl"], help="distributed backend under torchrun (default: gloo on CPU, nccl on CUDA)")
    parser.add_argument("--limit", type=int, help="use only the first N images of each subset")
    parser.add_argument("--store-dir", metavar="DIR",
                        help="decode the images into memory-mapped files in DIR instead of memory, for datasets "
                             "larger than memory (the files are removed once mapped; default: memory, or the run "
                             "folder when the decoded images would not fit in the memory available)")
    parser.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from .sizing import parse_policy
    from .train import TrainConfig, train

    names = ("model", "levels", "pool", "augment", "rotation", "zoom", "dropout", "widths", "hidden", "batch_norm",
             "epochs", "batch_size", "lr", "schedule", "warmup_epochs", "weight_decay", "label_smoothing",
             "flip_test", "val_split", "holdout", "seed", "split_seed", "precision", "limit")
    overrides = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    if any(v is not None for v in (args.size, args.sizes, args.size_range, args.native)):
        overrides["policy"] = parse_policy(args.size, args.sizes, args.size_range, args.native).to_config()
    config = TrainConfig.from_preset(args.preset, data=args.data, device=args.device, **overrides)
    config.epochs = args.epochs if args.resume else config.epochs  # resume: the run's own unless given
    config.out = args.out or f"runs/{config.model if args.preset == 'study' else args.preset}"
    metrics = train(config, resume=args.resume, reporter=ConsoleReporter(), backend=args.backend,
                    store_dir=args.store_dir)
    if metrics:
        print(f"best val_accuracy {metrics['best']['val_accuracy']:.4f} at epoch {metrics['best']['epoch']}; "
              f"run folder: {config.out}")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        sub,
        "evaluate",
        help="evaluate a run on its validation split",
        description=(
            "Loss, accuracy, per-class precision/recall/F1, calibration and a confusion matrix (text and "
            "PNG) of a run on a validation split. Views: --size S (warped), --native S (each image whole, "
            "SPP-net's full-image view), --scales S1,S2,... (softmax averaged over sizes)."
        ),
        epilog=(
            "examples:\n"
            "  sppnet evaluate runs/spp\n"
            "  sppnet evaluate runs/spp --native 180\n"
            "  sppnet evaluate runs/spp --scales 180,224,256 --json"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder")
    parser.add_argument("data", metavar="DATA", nargs="?", help="dataset (default: the run's own)")
    views = parser.add_mutually_exclusive_group()
    views.add_argument("--size", type=int, help="warp images to SIZE x SIZE")
    views.add_argument("--native", type=int, help="whole images, shorter side NATIVE")
    views.add_argument("--scales", type=_int_list, help="average the softmax over sizes, e.g. 180,224,256")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image's softmax with its mirror image's (default: as the run validated)")
    parser.add_argument("--weights", default="best", choices=["best", "last"], help="which weights (default best)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, help="only the first N validation images")
    parser.add_argument("--confusion-png", help="where to draw the confusion matrix (default RUN/confusion.png)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ._perf import bound_primitive_cache, keep_freed_memory
    from .evaluate import evaluate_run
    from .report import plot_confusion

    keep_freed_memory()  # batches of large activations: reuse freed memory instead of fresh pages
    bound_primitive_cache()  # padded batches of many shapes: a bounded cache of compiled kernels
    evaluation = evaluate_run(args.run_dir, args.data, args.size, args.native, args.scales, args.weights,
                              args.batch_size, args.device, args.limit, args.flip)
    png = Path(args.confusion_png) if args.confusion_png else Path(args.run_dir) / "confusion.png"
    plot_confusion(evaluation.confusion, evaluation.class_names, png, f"{args.run_dir}: {evaluation.extra['view']}")
    if args.json:
        print(json.dumps(evaluation.to_dict(), indent=2))
    else:
        print(f"view: {evaluation.extra['view']}, {args.weights} weights")
        print(evaluation.report())
        print(f"\nconfusion matrix picture: {png}")
    for reason in evaluation.extra["skipped_files"]:
        print(f"skipped: {reason}", file=sys.stderr)
    return 0


def _add_predict(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
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
    parser.add_argument("--weights", default="best", choices=["best", "last"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object per image")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images classified together, similar shapes zero-padded to the largest (default 32)")
    parser.set_defaults(run=_run_predict)


def _load_predictor(args: argparse.Namespace):
    """The Predictor of ``--onnx FILE`` or of the run folder, with --size, --weights, --device and
    --flip (where the command has it; default: the run's own test view)."""
    from .predict import Predictor
    from .train import resolve_device

    flip = getattr(args, "flip", None)
    if args.onnx:
        return Predictor.from_onnx(args.onnx, args.size, bool(flip))
    return Predictor.from_run(args.run_dir, args.weights, args.size, resolve_device(args.device), flip)


def _run_predict(args: argparse.Namespace) -> int:
    import json

    from ._perf import bound_primitive_cache, keep_freed_memory
    from .errors import ConfigError, SppnetError
    from .predict import expand_images

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
    predictor = _load_predictor(args)
    paths = expand_images(images)
    if not paths:
        raise ConfigError(f"no image files in {' '.join(map(str, images))}")
    keep_freed_memory()  # batches of large activations: reuse freed memory instead of fresh pages
    bound_primitive_cache()  # padded batches of many shapes: a bounded cache of compiled kernels
    failed = 0
    for path, result in zip(paths, predictor.predict_many(paths, batch_size=args.batch_size)):
        if isinstance(result, SppnetError):
            print(f"{PROG}: error: {result}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(result.to_dict()))
            continue
        print(f"{path} ({result.width}x{result.height})")
        k = args.top_k or len(result.probabilities)
        probs = result.top(k) if args.top_k else list(result.probabilities.items())
        print("  " + "  ".join(f"{name}: {p:.4f}" for name, p in probs))
        print(f"  {result.sentence()}")
    return 1 if failed else 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        sub,
        "serve",
        help="serve predictions over HTTP, with a web page (extra sppnet[serve])",
        description=(
            "An HTTP prediction service: POST /predict (multipart field 'image' or raw image bytes) answers "
            "JSON; GET /health, GET /model; GET / is a page to drop a photo on. Needs pip install 'sppnet[serve]'."
        ),
        epilog=(
            "examples:\n"
            "  sppnet serve runs/spp\n"
            "  sppnet serve runs/spp --host 0.0.0.0 --port 8080\n"
            "  sppnet serve --onnx spp.onnx\n"
            "  curl -F image=@sunflower.jpg http://127.0.0.1:8000/predict"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", nargs="?", help="run folder (omitted with --onnx)")
    parser.add_argument("--onnx", metavar="FILE", help="serve an exported ONNX model through onnxruntime instead of a run")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest upload in MB; larger get 413 (default 10)")
    parser.add_argument("--size", type=int, help="warp images to SIZE x SIZE instead of keeping their aspect ratio")
    parser.add_argument("--weights", default="best", choices=["best", "last"])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    import math

    from ._perf import bound_primitive_cache
    from .errors import ConfigError
    from .serve import _require_serve_deps, serve

    _require_serve_deps()
    if not (math.isfinite(args.max_upload_mb) and args.max_upload_mb > 0):
        raise ConfigError(f"--max-upload-mb must be a positive number, got {args.max_upload_mb}")
    if args.onnx and args.run_dir:
        raise ConfigError("give either a run folder or --onnx FILE, not both")
    if not args.onnx and not args.run_dir:
        raise ConfigError("give a run folder to serve (or --onnx FILE): sppnet serve RUN")
    bound_primitive_cache()  # uploads of every size: a bounded cache of compiled kernels
    predictor = _load_predictor(args)
    if args.onnx:
        info = {"model": "onnx", "source": str(args.onnx)}
    else:
        info = {"model": predictor.model.config.get("name", "model"), "source": str(args.run_dir)}
    print(f"Serving {info['source']} on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        serve(predictor, args.host, args.port, int(args.max_upload_mb * 1024 * 1024), info)
    except KeyboardInterrupt:
        pass
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .report import STUDY_VARIANTS

    parser = _subcommand(
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
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--variants", help="comma-separated subset of the variants")
    parser.add_argument("--limit", type=int, help="only the first N images of each subset")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=123)
    parser.set_defaults(run=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from .report import compare

    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    path = compare(args.data, args.out, args.epochs, variants, args.limit, args.device, args.seed, ConsoleReporter())
    print(path.read_text())
    print(f"report: {path}")
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = _subcommand(
        sub,
        "export",
        help="export a run's model to ONNX (dynamic height and width) or TorchScript",
        description=(
            "Export a run's model with dynamic batch, height and width. The file takes float RGB 0..255 "
            "N x 3 x H x W and returns logits and probabilities; class names and the training size go into "
            "its metadata. After writing, the export is compared with PyTorch on several sizes "
            "(onnxruntime for ONNX) and the largest difference is printed. ONNX needs "
            "pip install 'sppnet[export]'."
        ),
        epilog=(
            "examples:\n"
            "  sppnet export runs/spp --onnx spp.onnx\n"
            "  sppnet export runs/spp --torchscript spp.pt\n"
            "  sppnet export runs/spp --onnx spp.onnx --opset 20 --no-check"
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="run folder")
    parser.add_argument("--onnx", metavar="FILE", help="write an ONNX model")
    parser.add_argument("--torchscript", metavar="FILE", help="write a TorchScript module")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    parser.add_argument("--weights", default="best", choices=["best", "last"])
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="compare the export with PyTorch (default: on; for ONNX when onnxruntime is installed)")
    parser.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    import importlib.util

    from . import export
    from .runs import RunFolder

    if not args.onnx and not args.torchscript:
        raise ConfigError("say what to write: --onnx FILE and/or --torchscript FILE")
    run = RunFolder(args.run_dir)
    config = run.read_config()
    model = run.load_model(args.weights, "cpu")
    size = config.get("input_size") or 180
    if args.onnx:
        path = export.export_onnx(model, args.onnx, config["class_names"], size, args.opset)
        print(f"wrote {path} (dynamic batch, height and width; opset {args.opset})")
        check = args.check if args.check is not None else importlib.util.find_spec("onnxruntime") is not None
        if check:
            diff = export.check_onnx(model, path, size)
            print(f"onnxruntime vs PyTorch, largest logit difference: {diff:.2e}")
    if args.torchscript:
        path = export.export_torchscript(model, args.torchscript, size)
        print(f"wrote {path}")
        if args.check is not False:
            diff = export.check_torchscript(model, path, size)
            print(f"TorchScript vs PyTorch, largest logit difference: {diff:.2e}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Classify images of any size with CNNs that end in spatial pyramid pooling.",
        epilog="Run 'sppnet COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_predict(sub)
    _add_compare(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_data(sub)
    _add_models(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return args.run(args)
    except SppnetError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
