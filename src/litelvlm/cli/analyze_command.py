"""`litelvlm analyze`: token diagnostics on CLIP alone (runs on a CPU in minutes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import LiteLVLMError
from . import arguments


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="referent recall/precision of each method and CLIP's similarity inside vs outside the referent",
        description="Without the LLM: for each method and budget, the share of the referred object's patches "
        "that are kept (referent recall) and the share of kept patches on it (precision); and whether CLIP's "
        "patch-text similarity is lower inside the referent than outside (the paper's observation), as an AUC.",
    )
    parser.add_argument(
        "--clip", default="openai/clip-vit-large-patch14-336", help="CLIP checkpoint dir or hub id"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-root", help="directory holding refcoco/, refcoco+/, refcocog/ and the COCO images"
    )
    source.add_argument("--jsonl", help="a JSONL data set (see docs/evaluation.md)")
    parser.add_argument("--dataset", choices=("refcoco", "refcoco+", "refcocog"), default="refcoco")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", help="COCO train2014 directory (default: found under --data-root)")
    parser.add_argument(
        "--methods", type=arguments.method_list, default=["litelvlm", "topk_similarity", "random"]
    )
    parser.add_argument("--budgets", type=arguments.budget_list, default=[192, 128, 64])
    parser.add_argument("--protocol", choices=("glamm", "lisa"), default="glamm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--text-source", choices=("questions", "expressions"), default="questions")
    parser.add_argument("--out", required=True, help="directory for analysis.json, analysis.md, analysis.png")
    parser.add_argument("--no-progress", action="store_true")
    arguments.add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data import load_jsonl, load_refcoco
    from ..evaluation.diagnostics import analyze, markdown, plot_analysis
    from ..io import write_atomic, write_json
    from ..scoring import ClipScorer

    if args.limit is not None and args.limit < 1:
        raise LiteLVLMError(f"--limit must be at least 1, got {args.limit}.")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LiteLVLMError(f"--out {args.out!r} is a file; pass a directory.")
    if not out.parent.exists():
        raise LiteLVLMError(
            f"the parent of --out {args.out!r} does not exist; create {str(out.parent)!r} first."
        )
    dataset = (
        load_jsonl(args.jsonl)
        if args.jsonl
        else load_refcoco(args.data_root, args.dataset, args.split, args.images)
    )
    scorer = ClipScorer.from_pretrained(
        args.clip, dtype=arguments.resolve_dtype(args.dtype), device=arguments.resolve_device(args.device)
    )
    config = {
        "dataset": Path(args.jsonl).stem if args.jsonl else args.dataset,
        "split": "all" if args.jsonl else args.split,
        "methods": args.methods,
        "budgets": args.budgets,
        "protocol": args.protocol,
        "seed": args.seed,
        "limit": args.limit,
        "text_source": args.text_source,
        "clip": args.clip,
    }
    result = analyze(scorer, dataset, config, progress=not args.no_progress)
    out.mkdir(exist_ok=True)
    write_json(
        out / "analysis.json", {k: v for k, v in result.items() if k != "aucs"} | {"aucs": result["aucs"]}
    )
    write_atomic(out / "analysis.md", markdown(result).encode())
    plot_analysis(result, out / "analysis.png")
    print(markdown(result))
    return 0
