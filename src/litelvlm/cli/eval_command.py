"""`litelvlm eval`: RefCOCO/+/g (or JSONL) sweeps of methods x budgets; resumable; many processes via accelerate."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LiteLVLMError
from . import arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate methods x budgets on RefCOCO/+/g or a JSONL data set (cIoU, gIoU, P@X)",
        description="Evaluate GLaMM with token pruning. Writes records.jsonl (one line per expression, written "
        "ahead: kill the run at any time and start the same command again to continue), results.json, "
        "results.md and budget_vs_ciou.png into --out. Run with `accelerate launch -m litelvlm eval ...` to "
        "shard images over GPUs/nodes.",
    )
    parser.add_argument("--model", required=True, help="GLaMM checkpoint directory or hub id")
    parser.add_argument(
        "--clip", help="CLIP checkpoint dir or hub id (default: the config's mm_vision_tower)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-root", help="directory holding refcoco/, refcoco+/, refcocog/ and the COCO images"
    )
    source.add_argument("--jsonl", help="a JSONL data set: one referent per line (see docs/evaluation.md)")
    parser.add_argument("--dataset", choices=("refcoco", "refcoco+", "refcocog"), default="refcoco")
    parser.add_argument(
        "--split", default="val", help="val, testA, testB (refcoco, refcoco+); val, test (refcocog)"
    )
    parser.add_argument("--images", help="COCO train2014 directory (default: found under --data-root)")
    parser.add_argument("--methods", type=arguments.method_list, default=["litelvlm"], help="comma-separated")
    parser.add_argument(
        "--budgets",
        type=arguments.budget_list,
        default=[576, 192, 128, 64],
        help="comma-separated token budgets",
    )
    parser.add_argument(
        "--protocol", choices=("glamm", "lisa"), default="glamm", help="see docs/evaluation.md"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the protocol's sampling and of `random`")
    parser.add_argument("--limit", type=int, help="evaluate only the first N images (sorted by image id)")
    parser.add_argument("--order", choices=("paper", "raster"), default="paper", help="litelvlm token order")
    parser.add_argument("--text-source", choices=("questions", "expressions"), default="questions")
    parser.add_argument(
        "--budget-mode",
        choices=("average", "final"),
        default="average",
        help="in-LLM methods (fastv, pdrop, sparsevlm): the budget is the average number of visual tokens per "
        "decoder layer, or the number the deepest layers keep",
    )
    parser.add_argument("--low-similarity-share", type=arguments.share, default=1.0, help="litelvlm split")
    parser.add_argument("--out", required=True, help="run directory (created; an existing run is resumed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..data import load_jsonl, load_refcoco
    from ..evaluation.loop import evaluate
    from ..hosts.glamm_predictor import GlammPredictor
    from ..selection import get_method

    if args.limit is not None and args.limit < 1:
        raise LiteLVLMError(f"--limit must be at least 1, got {args.limit}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LiteLVLMError(f"--out {args.out!r} is a file; pass a directory for the run.")
    if not out.parent.exists():
        raise LiteLVLMError(
            f"the parent of --out {args.out!r} does not exist; create {str(out.parent)!r} first."
        )
    if args.jsonl:
        dataset = load_jsonl(args.jsonl)
        data, name, split = str(Path(args.jsonl).resolve()), Path(args.jsonl).stem, "all"
    else:
        dataset = load_refcoco(args.data_root, args.dataset, args.split, images=args.images)
        data, name, split = str(Path(args.data_root).resolve()), args.dataset, args.split
    state = PartialState(cpu=args.device == "cpu")
    device = (
        str(state.device)
        if state.num_processes > 1 or args.device is None
        else arguments.resolve_device(args.device)
    )
    predictor = GlammPredictor.from_pretrained(
        args.model, clip=args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    config = {
        "data": data,
        "dataset": name,
        "split": split,
        "protocol": args.protocol,
        "seed": args.seed,
        "limit": args.limit,
        "methods": args.methods,
        "budgets": args.budgets,
        "model": args.model,
        "clip": args.clip,
        "dtype": args.dtype,
        "text_source": args.text_source,
        "options": {
            "order": args.order,
            "low_similarity_share": args.low_similarity_share,
            "budget_mode": args.budget_mode,
        },
    }
    options = {
        name: get_method(name).supported(
            order=args.order, low_similarity_share=args.low_similarity_share, budget_mode=args.budget_mode
        )
        for name in args.methods
    }
    payload = evaluate(
        predictor,
        dataset,
        config,
        out,
        rank=state.process_index,
        world=state.num_processes,
        barrier=state.wait_for_everyone,
        progress=not args.no_progress,
        method_options=options,
    )
    if payload is not None:
        for row in payload["results"]:
            ciou = "n/a" if row["ciou"] is None else f"{100 * row['ciou']:.2f}"
            print(f"{row['method']:>16} @ {row['budget']:>4}: cIoU {ciou}  ({row['count']} expressions)")
        print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'budget_vs_ciou.png'}")
    return 0
