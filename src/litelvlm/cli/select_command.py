"""`litelvlm select`: which visual tokens a method keeps for an image and its referring expression(s)."""

from __future__ import annotations

import argparse
import json

from . import arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "select",
        help="choose the visual tokens to keep for an image and text(s)",
        description="Score the image's CLIP patches against the text(s) and print (or write) the kept indices "
        "in the order the LLM receives them.",
    )
    parser.add_argument(
        "--clip", default="openai/clip-vit-large-patch14-336", help="CLIP checkpoint dir or hub id"
    )
    parser.add_argument("--image", required=True, help="image file (JPEG, PNG, ...)")
    parser.add_argument(
        "--text", action="append", required=True, help="a referring expression; repeat for several (T texts)"
    )
    parser.add_argument(
        "--budget",
        type=arguments.budget,
        required=True,
        help="visual tokens to keep; a budget >= the number of patches (576) keeps them all, in raster order",
    )
    parser.add_argument("--method", type=arguments.method, default="litelvlm", help="selection method")
    arguments.add_method_arguments(parser)
    parser.add_argument("--select-layer", type=int, default=-2, help="CLIP layer the LLM reads (default -2)")
    parser.add_argument("--json", help="write the selection as JSON here (default: print it)")
    parser.add_argument("--overlay", help="write a PNG of the image with kept and pruned patches here")
    arguments.add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..images import load_image
    from ..prompts import clip_texts
    from ..scoring import ClipScorer, check_text
    from ..selection import get_method, select_tokens
    from .outputs import IMAGE_FORMATS, OutputFiles

    outputs = OutputFiles(inputs={"--image": args.image})
    json_path = outputs.add(args.json, "--json")
    overlay_path = outputs.add(args.overlay, "--overlay", suffixes=tuple(IMAGE_FORMATS))
    expressions = [check_text(text) for text in args.text]
    method = get_method(args.method)
    arguments.check_extra_options(args, [args.method])
    image = load_image(args.image)
    device = arguments.resolve_device(args.device)
    scorer = ClipScorer.from_pretrained(
        args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device, select_layer=args.select_layer
    )
    texts = clip_texts(expressions, args.text_source)
    scorer.set_image(image)
    scores = scorer.score(texts, needs=method.needs)
    options = arguments.method_options(args, args.method)
    selection = select_tokens(args.method, scores, args.budget, **options)
    payload = {
        "method": args.method,
        "budget": args.budget,
        "num_patches": scores.num_patches,
        "grid": list(scores.grid),
        "indices": selection.indices[0].tolist(),
        "kinds": selection.kind_names(0),
        "options": options,
        "texts": texts,
        "text_source": args.text_source,
        "image": args.image,
        "image_size": list(image.size),
        "clip": args.clip,
    }
    if json_path is not None:
        outputs.stage_json(json_path, payload)
    if overlay_path is not None:
        from ..viz import overlay

        picture = overlay(
            image,
            indices=payload["indices"],
            kinds=payload["kinds"],
            grid=scores.grid,
            geometry=scorer.preprocess.geometry(*image.size),
            title=f"{args.method} @ {min(args.budget, scores.num_patches)}/{scores.num_patches}",
        )
        outputs.stage_image(overlay_path, picture)
    outputs.commit("select")
    if json_path is None:
        print(json.dumps(payload))
    return 0
