"""`litelvlm eval`: RefCOCO/+/g (or JSONL) sweeps of methods x budgets; resumable; many processes via accelerate."""

from __future__ import annotations

import argparse

from ..evaluation.protocols import PROTOCOLS
from . import arguments

DEFAULT_PRUNED_BUDGETS = (192, 128, 64)  # the paper's budgets


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate methods x budgets on RefCOCO/+/g or a JSONL data set (cIoU, gIoU, P@X)",
        description="Evaluate a pixel-grounding model (GLaMM or LISA) with token pruning. Writes records.jsonl "
        "(one line per expression, written ahead: kill the run at any time and start the same command again to "
        "continue), results.json, results.md and budget_vs_ciou.png into --out. Run with "
        "`accelerate launch -m litelvlm eval ...` to shard images over GPUs/nodes.",
    )
    parser.add_argument("--model", required=True, help="GLaMM or LISA checkpoint directory or hub id")
    parser.add_argument("--clip", help="CLIP checkpoint dir or hub id (default: the config's vision tower)")
    arguments.add_data_arguments(parser)
    parser.add_argument("--methods", type=arguments.method_list, default=["litelvlm"], help="comma-separated")
    parser.add_argument(
        "--budgets",
        type=arguments.budget_list,
        help="comma-separated token budgets (default: all patches, then 192,128,64)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="glamm: <= 3 sampled expressions per image in one conversation; lisa: every sentence alone "
        "(default: the model's own protocol; see docs/evaluation.md)",
    )
    arguments.add_method_arguments(parser, seed_help="seed of the protocol's sampling and of `random`")
    parser.add_argument("--out", required=True, help="run directory (created; an existing run is resumed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    from ..evaluation.loop import evaluate
    from ..evaluation.protocols import check_protocol
    from ..hosts import GroundingPredictor, detect_host
    from ..hosts.registry import local_checkpoint_dir

    out = arguments.check_output_dir(args.out)
    directory = local_checkpoint_dir(args.model)
    host, _ = detect_host(directory)
    protocol = check_protocol(args.protocol or host.protocol, host)
    dataset, data, name, split = arguments.load_data(args)
    state = PartialState(cpu=args.device == "cpu")
    device = (
        str(state.device)
        if state.num_processes > 1 or args.device is None
        else arguments.resolve_device(args.device)
    )
    predictor = GroundingPredictor.from_pretrained(
        directory, clip=args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    budgets = args.budgets or [predictor.num_patches, *DEFAULT_PRUNED_BUDGETS]
    config = {
        "data": data,
        "dataset": name,
        "split": split,
        "protocol": protocol,
        "seed": args.seed,
        "limit": args.limit,
        "methods": args.methods,
        "budgets": budgets,
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
    options = {name: arguments.method_options(args, name) for name in args.methods}
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
