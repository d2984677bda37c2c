"""`litelvlm answer`: answers to questions about an image with a transformers LLaVA model and token pruning."""

from __future__ import annotations

import argparse
import time

from . import arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "answer",
        help="answer questions about an image with a transformers LLaVA model at a visual-token budget",
        description="Run a transformers LlavaForConditionalGeneration checkpoint (e.g. llava-hf/llava-1.5-7b-hf) "
        "with the chosen token-selection method and print each question's greedy answer. CLIP (--clip) scores "
        "the patches on LLaVA's own pixels; text-guided methods compare them with the question. All questions "
        "run as one batch.",
    )
    parser.add_argument(
        "--model", required=True, help="LLaVA checkpoint directory or hub id, e.g. llava-hf/llava-1.5-7b-hf"
    )
    parser.add_argument(
        "--clip",
        default="openai/clip-vit-large-patch14-336",
        help="the CLIP checkpoint LLaVA's vision tower comes from (scores; its text tower for text-guided methods)",
    )
    parser.add_argument("--image", required=True, help="image file")
    parser.add_argument("--question", action="append", required=True, help="a question; repeat for more")
    parser.add_argument(
        "--budget",
        type=arguments.budget,
        help="visual tokens fed to the LLM; at least the number of patches (576 for LLaVA-1.5) keeps them all "
        "(default: all, no pruning)",
    )
    parser.add_argument("--method", type=arguments.method, default="litelvlm", help="selection method")
    arguments.add_method_arguments(parser, text_source=False)
    arguments.add_positions_argument(parser)
    parser.add_argument(
        "--max-new-tokens", type=arguments.whole_number(1), default=64, help="generation length limit"
    )
    parser.add_argument(
        "--overlay", help="image file of the kept tokens, one panel per question (.png/.jpg/.webp)"
    )
    parser.add_argument("--json", help="write answers, kept tokens and per-stage timings here")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..hosts.llava import LlavaPredictor
    from ..images import load_image
    from ..scoring import check_text
    from .outputs import IMAGE_FORMATS, OutputFiles

    outputs = OutputFiles(inputs={"--image": args.image})
    overlay_path = outputs.add(args.overlay, "--overlay", suffixes=tuple(IMAGE_FORMATS))
    json_path = outputs.add(args.json, "--json")
    questions = [check_text(question) for question in args.question]
    arguments.check_extra_options(args, [args.method])
    image = load_image(args.image)
    device = arguments.resolve_device(args.device)
    start = time.perf_counter()
    llava = LlavaPredictor.from_pretrained(
        args.model, clip=args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    load_seconds = time.perf_counter() - start
    llava.set_image(image)
    options = arguments.method_options(args, args.method)
    batch = llava.answer(
        questions,
        method=args.method,
        budget=args.budget,
        max_new_tokens=args.max_new_tokens,
        positions=args.positions,
        share_prefix=args.share_prefix,
        **options,
    )
    timings = {**llava.image_timings, **batch.timings}
    timings["total"] = sum(timings.values())
    if overlay_path is not None:
        outputs.stage_image(overlay_path, _overlay(image, batch, llava, args.method))
    if json_path is not None:
        outputs.stage_json(
            json_path,
            {
                "host": "llava",
                "method": args.method,
                "positions": args.positions,
                "budget": batch.budget,
                "num_patches": llava.num_patches,
                "num_visual_tokens": batch.num_visual_tokens,
                "tokens_per_layer": batch.tokens_per_layer,
                "answers": [
                    {
                        "question": a.question,
                        "answer": a.text,
                        "tokens": a.tokens,
                        "indices": a.indices,
                        "kinds": a.kinds,
                        "llm_kept": a.llm_kept,
                    }  # fmt: skip
                    for a in batch.answers
                ],
                "image": args.image,
                "image_size": list(image.size),
                "options": options,
                "timings": timings,
                "load_seconds": load_seconds,
                "model": args.model,
                "clip": args.clip,
                "dtype": args.dtype,
                "device": device,
            },
        )
    outputs.commit("answer")
    for answer in batch.answers:
        print(answer.text if len(batch.answers) == 1 else f"{answer.question}\t{answer.text}")
    return 0


def _overlay(image, batch, llava, method: str):
    """One panel per question: the tokens its prompt kept (or, for in-LLM methods, those alive in the deepest
    layers), dimmed where pruned."""
    from ..viz import overlay, side_by_side

    geometry = llava.scorer.preprocess.geometry(*image.size)
    panels = []
    for answer in batch.answers:
        kept = answer.llm_kept if answer.llm_kept is not None else answer.indices
        kinds = None if answer.llm_kept is not None else answer.kinds
        title = f"{method} @ {len(kept)}/{llava.num_patches}: {answer.question[:40]}"
        panels.append(
            overlay(image, indices=kept, kinds=kinds, grid=llava.scorer.grid, geometry=geometry, title=title)
        )
    return side_by_side(panels)
