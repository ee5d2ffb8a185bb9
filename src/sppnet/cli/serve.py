"""``sppnet serve``: an HTTP prediction service with a web page (extra ``sppnet[serve]``)."""

from __future__ import annotations

import argparse

from .common import subcommand

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
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
    parser.add_argument("--weights", default="best", choices=["best", "last"],
                        help="the run's best epoch's weights or its last's (default best)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default auto)")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a request's headers may take to arrive; slower connections are closed (default 10)")
    parser.add_argument("--body-timeout", type=float, default=30.0,
                        help="seconds a request's body may take after its headers (default 30)")
    parser.add_argument("--max-connections", type=int, default=100,
                        help="connections served at once; more get 503 (default 100)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..serve import serve_run

    try:
        serve_run(args.run_dir, args.onnx, args.host, args.port, args.max_upload_mb, args.size, args.weights,
                  args.device, on_ready=lambda url: print(f"Serving {args.onnx or args.run_dir} on {url} (Ctrl-C stops)",
                                                          flush=True),
                  header_timeout=args.header_timeout, body_timeout=args.body_timeout,
                  max_connections=args.max_connections)
    except KeyboardInterrupt:
        pass
    return 0
