"""`litelvlm analyze`: token diagnostics on CLIP alone (runs on a CPU in minutes)."""

from __future__ import annotations

import argparse

from ..evaluation.protocols import PROTOCOLS
from ..prompts import TEXT_SOURCES
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
    arguments.add_data_arguments(parser)
    parser.add_argument(
        "--methods",
        type=arguments.method_list,
        default=["litelvlm", "topk_similarity", "random"],
        help="comma-separated before-LLM methods",
    )
    parser.add_argument(
        "--budgets", type=arguments.budget_list, default=[192, 128, 64], help="comma-separated token budgets"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="glamm",
        help="which expressions of each image are taken",
    )
    parser.add_argument(
        "--seed",
        type=arguments.whole_number(0),
        default=0,
        help="seed of the protocol's sampling and of `random`",
    )
    parser.add_argument(
        "--text-source",
        choices=TEXT_SOURCES,
        default="questions",
        help="what CLIP scores: the questions asked or the raw expressions",
    )
    parser.add_argument("--out", required=True, help="directory for analysis.json, analysis.md, analysis.png")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments.add_device_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.diagnostics import analysis_options, analyze, markdown, plot_analysis
    from ..io import format_json
    from ..scoring import ClipScorer
    from ..selection.feasibility import check_combinations
    from .outputs import OutputFiles, check_output_dir

    out = check_output_dir(args.out)
    outputs = OutputFiles()
    files = [
        outputs.add(str(out / name), "--out") for name in ("analysis.json", "analysis.md", "analysis.png")
    ]
    dataset, _, name, split = arguments.load_data(args)
    scorer = ClipScorer.from_pretrained(
        args.clip, dtype=arguments.resolve_dtype(args.dtype), device=arguments.resolve_device(args.device)
    )
    options = {method: analysis_options(method, args.seed) for method in args.methods}
    check_combinations(args.methods, args.budgets, options, grid=scorer.grid, num_layers=None)
    config = {
        "dataset": name,
        "split": split,
        "methods": args.methods,
        "budgets": args.budgets,
        "protocol": args.protocol,
        "seed": args.seed,
        "limit": args.limit,
        "text_source": args.text_source,
        "clip": args.clip,
    }
    result = analyze(scorer, dataset, config, progress=not args.no_progress)
    payload = {k: v for k, v in result.items() if k != "aucs"} | {"aucs": result["aucs"]}
    for path, data in zip(
        files, (format_json(payload).encode(), markdown(result).encode(), plot_analysis(result))
    ):
        outputs.stage(path, data)
    outputs.commit("analyze")
    print(markdown(result))
    return 0
