"""`litelvlm demo`: serve the demo page (litelvlm.demo) for a checkpoint, or for tiny random models (--tiny)."""

from __future__ import annotations

import argparse
import tempfile
import time

from ..errors import LiteLVLMError
from . import arguments


def add_parser(subparsers) -> None:
    from ..demo.engine import MAX_MEGAPIXELS, MAX_UPLOAD_MB

    parser = subparsers.add_parser(
        "demo",
        help="serve a web page: upload an image, type expressions, see kept tokens, masks and timings",
        description="Serve the demo page (Gradio) on --host:--port. One model is shared by every visitor; "
        "requests wait in a queue and run one at a time. --tiny serves tiny random GLaMM and LISA models "
        "built on the spot (no download): the page, the pruning and the timings are real, the masks are not.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="GLaMM or LISA checkpoint directory or hub id")
    source.add_argument("--tiny", action="store_true", help="tiny random GLaMM and LISA (random weights)")
    parser.add_argument("--clip", help="CLIP checkpoint dir or hub id (default: the config's vision tower)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="upload size limit in MB")
    parser.add_argument(
        "--max-megapixels", type=float, default=MAX_MEGAPIXELS, help="upload size limit in megapixels"
    )
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise LiteLVLMError(f"--port must be between 1 and 65535, got {args.port}.")
    for flag, value in (("--max-upload-mb", args.max_upload_mb), ("--max-megapixels", args.max_megapixels)):
        if not value > 0:
            raise LiteLVLMError(f"{flag} must be positive, got {value}.")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LiteLVLMError('the demo needs Gradio; install it with pip install "litelvlm[demo]".') from None
    from ..demo.app import TINY_BANNER, build_demo, theme
    from ..demo.engine import DemoEngine

    start = time.perf_counter()
    predictors = _tiny_predictors() if args.tiny else _predictors(args)
    engine = DemoEngine(predictors, max_mb=args.max_upload_mb, max_megapixels=args.max_megapixels)
    demo = build_demo(engine, banner=TINY_BANNER if args.tiny else None)
    print(
        f"litelvlm demo: models ready in {time.perf_counter() - start:.1f} s: {', '.join(predictors)}",
        flush=True,
    )
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        max_file_size=int(args.max_upload_mb * 2**20),  # bytes; Gradio refuses bigger uploads itself
        theme=theme(),
        ssr_mode=False,  # no Node.js server-side rendering: one Python process serves the page
    )
    return 0


def _predictors(args: argparse.Namespace) -> dict:
    from ..hosts import GroundingPredictor

    predictor = GroundingPredictor.from_pretrained(
        args.model,
        clip=args.clip,
        dtype=arguments.resolve_dtype(args.dtype),
        device=arguments.resolve_device(args.device),
    )
    return {predictor.host.display_name: predictor}


def _tiny_predictors() -> dict:
    """Tiny random GLaMM and LISA checkpoints in a temporary directory, loaded as a real checkpoint is."""
    import torch

    from ..hosts import GroundingPredictor
    from ..testing import make_tiny_glamm, make_tiny_lisa

    root = tempfile.mkdtemp(prefix="litelvlm-tiny-")
    built = {
        "tiny GLaMM (random)": make_tiny_glamm(f"{root}/glamm"),
        "tiny LISA (random)": make_tiny_lisa(f"{root}/lisa"),
    }
    return {
        name: GroundingPredictor.from_pretrained(path, dtype=torch.float32, device="cpu")
        for name, path in built.items()
    }
