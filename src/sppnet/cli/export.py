"""``sppnet export``: a run's model to ONNX (dynamic height and width) or TorchScript."""

from __future__ import annotations

import argparse

from .common import subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
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
    parser.add_argument("--weights", default="best", choices=["best", "last"],
                        help="the run's best epoch's weights or its last's (default best)")
    parser.add_argument("--check", action=argparse.BooleanOptionalAction, default=None,
                        help="compare the export with PyTorch (default: on; for ONNX when onnxruntime is installed)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..export import export_run

    written = export_run(args.run_dir, args.onnx, args.torchscript, args.opset, args.weights, args.check)
    if "onnx" in written:
        path, diff = written["onnx"]
        print(f"wrote {path} (dynamic batch, height and width; opset {args.opset})")
        if diff is not None:
            print(f"onnxruntime vs PyTorch, largest logit difference: {diff:.2e}")
    if "torchscript" in written:
        path, diff = written["torchscript"]
        print(f"wrote {path}")
        if diff is not None:
            print(f"TorchScript vs PyTorch, largest logit difference: {diff:.2e}")
    return 0
