"""`litelvlm bench`: stage-wise speed, memory and FLOPs of a grounding host (or of LLaVA) across methods and
budgets."""

from __future__ import annotations

import argparse
import datetime
import shlex

from ..errors import LiteLVLMError
from ..hosts.registry import list_hosts
from . import arguments
from .eval_command import DEFAULT_PRUNED_BUDGETS

DEFAULT_TEXT = "the man in the red shirt on the left"
LLAVA = "llava"  # not a grounding host: benchmarked by litelvlm.bench_llava


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="per-stage latency, peak/activation memory and FLOPs across methods and budgets",
        description="Benchmark a host's exact 7B architecture (GLaMM-7B, LISA-7B or LLaVA-1.5-7B, --host) with "
        "random weights (no download), or a real checkpoint with --model. --llm-layers/--sam-layers keep every "
        "width and cut depth for quick runs; such runs are labelled scaled and their full-depth extrapolation is "
        "shown apart from measurements. LLaVA: LLM prefill and whole-answer seconds per budget against their "
        "FLOP ideals.",
    )
    parser.add_argument(
        "--host",
        choices=[*list_hosts(), LLAVA],
        default="glamm",
        help="the architecture built with random weights (default glamm); llava: llava-hf/llava-1.5-7b-hf's; "
        "with --model a checkpoint directory says which (a LLaVA hub id needs --host llava)",
    )
    parser.add_argument(
        "--model",
        help="a GLaMM, LISA or transformers LLaVA checkpoint (default: --host's architecture, random weights)",
    )
    parser.add_argument(
        "--clip",
        help="CLIP checkpoint for --model (default: the config's vision tower; for LLaVA "
        "openai/clip-vit-large-patch14-336)",
    )
    parser.add_argument(
        "--llm-layers",
        type=arguments.whole_number(1),
        help="scaled run: this many LLM layers (default: the full 32)",
    )
    parser.add_argument(
        "--sam-attention",
        choices=("fused", "sdpa", "eager"),
        help="SAM image encoder: litelvlm's fused forward, or transformers' layers with SDPA or eager attention "
        "(for before/after; eager only with the random model) (default: the faster on the device, fused on a CPU, "
        "sdpa on CUDA)",
    )
    parser.add_argument(
        "--sam-layers",
        type=arguments.whole_number(1),
        help="scaled run: this many SAM encoder blocks (default: the full 32)",
    )
    parser.add_argument("--methods", type=arguments.method_list, default=["litelvlm"], help="comma-separated")
    parser.add_argument("--budgets", type=arguments.budget_list,
                        help="comma-separated (default: all patches, then 192,128,64)")  # fmt: skip
    parser.add_argument(
        "--budget-mode", choices=("average", "final"), default="average", help="in-LLM methods"
    )
    parser.add_argument("--image", help="image file (default: a synthetic 640 x 480 picture)")
    parser.add_argument(
        "--text",
        action="append",
        help=f"expression(s) in the conversation, repeatable (default: {DEFAULT_TEXT!r}); LLaVA: question(s), "
        "one conversation each",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=arguments.whole_number(1),
        help="LLaVA: tokens generated per question, end-of-sequence suppressed (default: 8)",
    )
    parser.add_argument(
        "--runs", type=arguments.whole_number(1), default=3, help="timed runs per configuration (median)"
    )
    parser.add_argument("--warmup", type=arguments.whole_number(0), default=1, help="untimed runs before")
    parser.add_argument(
        "--threads", type=arguments.whole_number(1), help="torch CPU threads (default: torch's choice)"
    )
    parser.add_argument("--throughput", type=arguments.whole_number(0), default=0, metavar="N",
                        help="also measure expressions/s on one image with N expressions (e.g. 7)")  # fmt: skip
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--markdown", help="write the Markdown table here")
    parser.add_argument("--plot", help="write the latency/memory plot (PNG) here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..bench import benchmark, machine, markdown, plot, predictor_dims, throughput
    from ..hosts import GroundingPredictor, get_host
    from ..hosts.sam import SAM_VIT_H, default_sam_attention
    from ..images import load_image
    from ..memory import memory_method
    from ..selection import get_method
    from ..selection.feasibility import check_combinations
    from ..synthetic import random_predictor
    from .outputs import OutputFiles

    outputs = OutputFiles(inputs={"--image": args.image})
    json_path = outputs.add(args.json, "--json")
    markdown_path = outputs.add(args.markdown, "--markdown")
    plot_path = outputs.add(args.plot, "--plot", suffixes=(".png",))
    if args.threads:
        torch.set_num_threads(args.threads)
    device = arguments.resolve_device(args.device)
    dtype = arguments.resolve_dtype(args.dtype)
    sam_attention = args.sam_attention or default_sam_attention(device)
    image = load_image(args.image) if args.image else _synthetic_image()
    if args.host == LLAVA or _is_llava_checkpoint(args.model):
        return _run_llava(args, outputs, (json_path, markdown_path, plot_path), device, dtype, image)
    if args.max_new_tokens is not None:
        raise LiteLVLMError("--max-new-tokens applies to LLaVA (--host llava); drop it.")
    expressions = args.text or [DEFAULT_TEXT]
    if args.model:
        if args.llm_layers or args.sam_layers:
            raise LiteLVLMError(
                "--llm-layers/--sam-layers apply to the random full-size model; drop --model."
            )
        if args.sam_attention == "eager":
            raise LiteLVLMError(
                "--sam-attention eager applies to the random full-size model; use fused or sdpa with --model."
            )
        predictor = GroundingPredictor.from_pretrained(args.model, clip=args.clip, dtype=dtype, device=device)
        predictor.model.sam.fused_encoder = sam_attention == "fused"
    else:
        predictor = random_predictor(
            get_host(args.host),
            llm_layers=args.llm_layers,
            sam_layers=args.sam_layers,
            sam_attention=sam_attention,
            dtype=dtype,
            device=device,
        )
    options = {name: get_method(name).supported(budget_mode=args.budget_mode) for name in args.methods}
    budgets = args.budgets or [predictor.num_patches, *DEFAULT_PRUNED_BUDGETS]
    check_combinations(args.methods, budgets, options, grid=predictor.scorer.grid,
                       num_layers=predictor.model.llm.config.num_hidden_layers)  # fmt: skip
    rows = benchmark(predictor, image, expressions, args.methods, budgets, runs=args.runs,
                     warmup=args.warmup, method_options=options, progress=not args.no_progress)  # fmt: skip
    dims = predictor_dims(predictor)  # labels come from the model run, whatever built it
    full_layers = predictor.host.full_size_llama()["num_hidden_layers"]
    scaled = dims.llm_layers != full_layers or dims.sam_layers != SAM_VIT_H.num_hidden_layers
    report = {
        "runs": rows,
        "config": {
            "host": predictor.host.display_name,
            "model": args.model or f"{predictor.host.display_name}-7B architecture, random weights",
            "scaled": scaled,
            "scale": f"LLM {dims.llm_layers}/{full_layers} layers, "
            f"SAM {dims.sam_layers}/{SAM_VIT_H.num_hidden_layers} blocks",
            "sam_attention": sam_attention,
            "device": device,
            "dtype": args.dtype,
            "runs": args.runs,
            "warmup": args.warmup,
            "expressions": expressions,
            "image_size": list(image.size),
            "machine": machine(),
            "memory_method": memory_method(device),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "litelvlm " + " ".join(shlex.quote(a) for a in args.argv),
        },
    }
    if args.throughput:
        texts = [f"{DEFAULT_TEXT} number {i}" for i in range(args.throughput)]
        method = args.methods[0]
        budget = min(budgets)
        report["throughput"] = throughput(predictor, image, texts, method, budget, options[method])
    text = markdown(report)
    print(text)
    if json_path:
        outputs.stage_json(json_path, report)
    if markdown_path:
        outputs.stage(markdown_path, text.encode())
    if plot_path:
        outputs.stage(plot_path, plot(report))
    outputs.commit("bench")
    return 0


def _is_llava_checkpoint(model: str | None) -> bool:
    """Whether --model is a local directory holding a transformers LLaVA checkpoint (its config.json says)."""
    import json
    import os

    from ..hosts.llava import ARCHITECTURE

    if not model or not os.path.isdir(model):
        return False
    try:
        with open(os.path.join(model, "config.json"), encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return False  # the grounding hosts' loader explains what is wrong
    return isinstance(config, dict) and ARCHITECTURE in (config.get("architectures") or [])


def _run_llava(args: argparse.Namespace, outputs, paths, device, dtype, image) -> int:
    """`bench` on LLaVA: prefill and whole-answer speed-ups per budget against their FLOP ideals."""
    from ..bench import machine
    from ..bench_llava import (
        DEFAULT_NEW_TOKENS,
        DEFAULT_QUESTION,
        FULL_SIZE_NAME,
        LLAVA_15_7B_TEXT,
        benchmark_llava,
        llava_15_7b_config,
        markdown,
        plot,
        random_llava_predictor,
    )
    from ..hosts.llava import LlavaPredictor
    from ..memory import memory_method
    from ..scoring import DEFAULT_CLIP
    from ..selection import get_method
    from ..selection.feasibility import check_combinations

    for flag, given in (("--sam-layers", args.sam_layers), ("--sam-attention", args.sam_attention),
                        ("--throughput", args.throughput)):  # fmt: skip
        if given:
            raise LiteLVLMError(f"{flag} applies to GLaMM and LISA, and LLaVA has no SAM; drop {flag}.")
    json_path, markdown_path, plot_path = paths
    full_layers = LLAVA_15_7B_TEXT["num_hidden_layers"]
    options = {name: get_method(name).supported(budget_mode=args.budget_mode) for name in args.methods}

    def checked_budgets(grid: tuple[int, int], layers: int) -> list[int]:
        budgets = args.budgets or [grid[0] * grid[1], *DEFAULT_PRUNED_BUDGETS]
        check_combinations(args.methods, budgets, options, grid=grid, num_layers=layers)
        return budgets

    if args.model:
        if args.llm_layers:
            raise LiteLVLMError("--llm-layers applies to the random full-size model; drop --model.")
        predictor = LlavaPredictor.from_pretrained(args.model, clip=args.clip or DEFAULT_CLIP, dtype=dtype,
                                                   device=device)  # fmt: skip
        budgets = checked_budgets(predictor.scorer.grid, predictor.language.model.config.num_hidden_layers)
    else:  # checked before the minute the full-size build takes
        vision = llava_15_7b_config().vision_config
        side = vision.image_size // vision.patch_size
        budgets = checked_budgets((side, side), args.llm_layers or full_layers)
        predictor = random_llava_predictor(llm_layers=args.llm_layers, dtype=dtype, device=device)
    questions = args.text or [DEFAULT_QUESTION]
    new_tokens = args.max_new_tokens or DEFAULT_NEW_TOKENS
    layers = predictor.language.model.config.num_hidden_layers
    scaled = not args.model and layers != full_layers
    rows = benchmark_llava(predictor, image, questions, args.methods, budgets, runs=args.runs, warmup=args.warmup,
                           new_tokens=new_tokens, method_options=options,
                           full_llm_layers=full_layers if scaled else None, progress=not args.no_progress)  # fmt: skip
    report = {
        "runs": rows,
        "config": {
            "host": "LLaVA",
            "model": args.model or FULL_SIZE_NAME,
            "clip": (args.clip or DEFAULT_CLIP) if args.model else "CLIP ViT-L/14-336, random weights",
            "random_weights": not args.model,
            "scaled": scaled,
            "scale": f"LLM {layers}/{full_layers} layers",
            "device": device,
            "dtype": args.dtype,
            "runs": args.runs,
            "warmup": args.warmup,
            "max_new_tokens": new_tokens,
            "questions": questions,
            "text_tokens": [len(predictor.prompt_ids(question)) - 1 for question in questions],
            "num_patches": predictor.num_patches,
            "image_size": list(image.size),
            "machine": machine(),
            "memory_method": memory_method(device),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "command": "litelvlm " + " ".join(shlex.quote(a) for a in args.argv),
        },
    }
    text = markdown(report)
    print(text)
    if json_path:
        outputs.stage_json(json_path, report)
    if markdown_path:
        outputs.stage(markdown_path, text.encode())
    if plot_path:
        outputs.stage(plot_path, plot(report))
    outputs.commit("bench")
    return 0


def _synthetic_image():
    """A 640 x 480 picture with a few shapes (content does not change the cost)."""
    from PIL import Image, ImageDraw

    picture = Image.new("RGB", (640, 480), (90, 140, 200))
    draw = ImageDraw.Draw(picture)
    draw.ellipse((200, 120, 420, 380), fill=(200, 60, 60))
    draw.rectangle((40, 300, 180, 460), fill=(240, 240, 240))
    return picture
