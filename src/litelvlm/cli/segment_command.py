"""`litelvlm segment`: masks for referring expressions with a pruned host (GLaMM, LISA)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..errors import LiteLVLMError
from . import arguments

EXIT_NO_MASK = 1  # the command ran, but the model wrote no [SEG] for any expression (only with --generate)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment referring expressions with GLaMM or LISA at a visual-token budget",
        description="Run a pixel-grounding model (GLaMM or LISA, read from the checkpoint) with the chosen "
        "token-selection method and write one mask PNG per expression. Expressions share conversations as "
        "the host's evaluation does (GLaMM: up to 3 turns of one conversation; LISA: one conversation each), "
        "all run as one batch. With --generate each expression is its own conversation and the model writes "
        "the answer.",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint directory or hub id: MBZUAI/GLaMM-RefSeg, xinlai/LISA-7B-v1, "
        "xinlai/LISA-13B-llama2-v1",
    )
    parser.add_argument(
        "--clip", help="CLIP checkpoint dir or hub id (default: the model config's vision tower)"
    )
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument(
        "--text", action="append", required=True, help="a referring expression; repeat for more"
    )
    parser.add_argument(
        "--budget",
        type=arguments.budget,
        help="visual tokens fed to the LLM; at least the number of patches (GLaMM 576, LISA 256) keeps them all "
        "(default: all, no pruning)",
    )
    parser.add_argument("--method", type=arguments.method, default="litelvlm", help="selection method")
    parser.add_argument(
        "--full-budget",
        choices=("identity", "method"),
        default="identity",
        help="at a budget >= the number of patches: keep all tokens in raster order (identity) or run the method "
        "anyway (litelvlm paper order then permutes them, as the authors' code does)",
    )
    arguments.add_method_arguments(parser)
    arguments.add_positions_argument(parser)
    parser.add_argument("--generate", action="store_true", help="let the model write its answer (greedy)")
    parser.add_argument(
        "--max-new-tokens",
        type=arguments.whole_number(1),
        help="with --generate: generation length limit (default: 64)",
    )
    parser.add_argument(
        "--out", required=True, help="mask PNG; with several expressions NAME_0.png, NAME_1.png, ..."
    )
    parser.add_argument("--overlay", help="PNG of the image with the masks and the kept tokens")
    parser.add_argument("--json", help="write indices, answers, mask areas and per-stage timings here")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def mask_paths(out: Path, count: int) -> list[Path]:
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{index}{out.suffix}") for index in range(count)]


def run(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image

    from ..hosts import GroundingPredictor
    from ..images import load_image
    from ..scoring import check_text
    from .outputs import IMAGE_FORMATS, OutputFiles

    outputs = OutputFiles(inputs={"--image": args.image})
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise LiteLVLMError(f"--out {args.out!r} must name a .png file (masks are stored losslessly).")
    paths = [outputs.add(str(path), "--out") for path in mask_paths(out, len(args.text))]
    overlay_path = outputs.add(args.overlay, "--overlay", suffixes=tuple(IMAGE_FORMATS))
    json_path = outputs.add(args.json, "--json")
    if args.max_new_tokens is not None and not args.generate:
        raise LiteLVLMError(
            "--max-new-tokens applies to --generate; add --generate or drop --max-new-tokens."
        )
    expressions = [check_text(text) for text in args.text]
    arguments.check_extra_options(args, [args.method])
    image = load_image(args.image)
    device = arguments.resolve_device(args.device)
    start = time.perf_counter()
    predictor = GroundingPredictor.from_pretrained(
        args.model, clip=args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    load_seconds = time.perf_counter() - start
    predictor.set_image(image)
    options = arguments.method_options(args, args.method)
    prediction = predictor.predict(
        expressions,
        budget=args.budget,
        method=args.method,
        generate_answer=args.generate,
        text_source=args.text_source,
        **({} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}),
        full_budget=args.full_budget,
        positions=args.positions,
        share_prefix=args.share_prefix,
        **options,
    )
    records = []
    for number, (result, path) in enumerate(zip(prediction.results, paths)):
        if result.mask is None:
            print(
                f"litelvlm segment: expression {number} ({result.expression!r}): the model generated no [SEG] "
                f"token (answer: {result.answer!r}); no mask written.",
                flush=True,
            )
        else:
            outputs.stage_image(path, Image.fromarray(result.mask.astype(np.uint8) * 255))
        records.append(
            {
                "text": result.expression,
                "answer": result.answer,
                "seg_found": result.seg_found,
                "mask_file": str(path) if result.mask is not None else None,
                "mask_area": int(result.mask.sum()) if result.mask is not None else 0,
                "conversation": result.conversation,
            }
        )
    conversations = {}
    for result in prediction.results:
        conversations.setdefault(result.conversation, {"indices": result.indices, "kinds": result.kinds})
    timings = {**predictor.image_timings, **prediction.timings}
    timings["total"] = sum(timings.values())
    if overlay_path is not None:
        outputs.stage_image(overlay_path, _overlay(image, prediction, predictor, args))
    if json_path is not None:
        outputs.stage_json(
            json_path,
            {
                "host": predictor.host.name,
                "method": args.method,
                "positions": args.positions,
                "budget": prediction.budget,
                "num_patches": predictor.num_patches,
                "num_visual_tokens": prediction.num_visual_tokens,
                "tokens_per_layer": prediction.tokens_per_layer,
                "average_visual_tokens": prediction.average_visual_tokens,
                "permuted": prediction.permuted,
                "generate": args.generate,
                "image": args.image,
                "image_size": list(image.size),
                "expressions": records,
                "conversations": [conversations[key] for key in sorted(conversations)],
                "options": options,
                "timings": timings,
                "load_seconds": load_seconds,
                "model": args.model,
                "dtype": args.dtype,
                "device": device,
            },
        )
    outputs.commit("segment")
    found = sum(record["seg_found"] for record in records)
    print(
        json.dumps(
            {"masks": found, "of": len(records), "files": [r["mask_file"] for r in records if r["mask_file"]]}
        )
    )
    if found == 0:
        print(
            f"litelvlm segment: no expression produced a mask (no [SEG] token was generated); exit code "
            f"{EXIT_NO_MASK}.",
            file=sys.stderr,
        )
        return EXIT_NO_MASK
    return 0


def _overlay(image, prediction, predictor, args):
    from ..viz import prediction_overlay

    title = f"{args.method} @ {prediction.num_visual_tokens}/{predictor.scorer.num_patches}"
    return prediction_overlay(image, prediction, predictor, title)
