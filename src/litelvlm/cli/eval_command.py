"""`litelvlm eval`: RefCOCO/+/g (or JSONL) sweeps of methods x budgets; resumable; many processes via accelerate."""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

from ..errors import LiteLVLMError
from ..evaluation.paper import PRESETS
from ..evaluation.protocols import PROTOCOLS
from . import arguments
from .outputs import check_output_dir

TASKS = ("segment", "rec", "vqa")  # segmentation with GLaMM/LISA; box grounding and VQA with a LLaVA
DEFAULT_PRUNED_BUDGETS = (192, 128, 64)  # the paper's budgets
# Without --preset: the data set, split and methods when not given (None marks "not given" for --preset).
DEFAULTS = {"dataset": "refcoco", "split": "val", "methods": ["litelvlm"]}
# The flags a preset sets itself.
PRESET_FLAGS = ("dataset", "split", "jsonl", "methods", "budgets")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate methods x budgets on RefCOCO/+/g or a JSONL data set (cIoU, gIoU, P@X)",
        description="Evaluate a pixel-grounding model (GLaMM or LISA) with token pruning. Writes records.jsonl "
        "(one line per expression, written ahead: kill the run at any time and start the same command again to "
        "continue), results.json, results.md and budget_vs_ciou.png into --out. Run with "
        "`accelerate launch -m litelvlm eval ...` to shard images over GPUs/nodes.",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="segment",
        help="segment: referring segmentation with GLaMM or LISA (cIoU); rec: box grounding with a transformers "
        "LLaVA (Acc@0.5, mean IoU) on the same data; vqa: a LLaVA on a VQA JSONL (--jsonl; VQAv2 accuracy)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="GLaMM or LISA checkpoint directory or hub id; a LLaVA one with --task rec/vqa",
    )
    parser.add_argument(
        "--clip",
        help="CLIP checkpoint dir or hub id (default: the config's vision tower; for LLaVA "
        "openai/clip-vit-large-patch14-336)",
    )
    arguments.add_data_arguments(parser)
    parser.add_argument("--methods", type=arguments.method_list, help="comma-separated (default: litelvlm)")
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
    arguments.add_positions_argument(parser)
    parser.add_argument(
        "--images-per-batch",
        type=arguments.whole_number(1),
        default=1,
        metavar="N",
        help="images whose CLIP pass, SAM encoder and conversations run as one padded batch (faster on GPUs; each "
        "image adds about 0.5 GiB of bf16 activations; results equal N=1 up to float rounding, so N is part of "
        "the run's identity when > 1)",
    )
    parser.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        help="paper: the LiteLVLM paper's table, methods trim,fastv,prumerge,visionzip,vispruner,litelvlm at "
        "all patches and 192,128,64 on the 8 RefCOCO/+/g splits of --data-root, one sub-run per split in --out, "
        "then paper_table.md/.json and paper_budget_vs_ciou.png next to the published numbers (replaces "
        "--dataset, --split, --methods and --budgets)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=arguments.whole_number(1),
        help="--task rec/vqa: generation length limit (default: rec 48, vqa 16)",
    )
    parser.add_argument("--out", required=True, help="run directory (created; an existing run is resumed)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    arguments.add_device_arguments(parser, default_dtype="bfloat16")
    parser.set_defaults(run=run, dataset=None, split=None, methods=None)
    for action in parser._actions:  # None marks "not given" for --preset; --help shows the real default
        if action.dest in ("dataset", "split"):
            action.help = f"{action.help} (default: {DEFAULTS[action.dest]})"


def run(args: argparse.Namespace) -> int:
    if args.task != "segment":
        return run_answers(args)
    if args.max_new_tokens is not None:
        raise LiteLVLMError("--max-new-tokens applies to --task rec and vqa; drop it for segmentation.")
    if args.preset:
        return run_preset(args)
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    from ..evaluation.loop import evaluate, run_config

    arguments.check_extra_options(args, args.methods)
    out = check_output_dir(args.out)
    directory, protocol = _checkpoint_and_protocol(args)
    dataset, data, name, split = arguments.load_data(args)
    state, predictor = _load_predictor(args, directory)
    budgets = args.budgets or [predictor.num_patches, *DEFAULT_PRUNED_BUDGETS]
    arguments.check_run_plan(args, args.methods, budgets, predictor)
    config = run_config(
        dataset=name,
        split=split,
        methods=args.methods,
        budgets=budgets,
        **_shared_config(args, data, protocol),
    )
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


def run_answers(args: argparse.Namespace) -> int:
    """--task rec / vqa with a transformers LLaVA (evaluation/answer_loop.py)."""
    from ..evaluation.answer_loop import evaluate_answers, rec_images, vqa_images

    refused = [flag for flag, given in (("--preset", args.preset), ("--protocol", args.protocol),
                                        ("--images-per-batch", args.images_per_batch > 1)) if given]  # fmt: skip
    if refused:
        raise LiteLVLMError(
            f"{' and '.join(refused)} apply to --task segment; drop them for --task {args.task}."
        )
    if args.task == "vqa" and not args.jsonl:
        raise LiteLVLMError("--task vqa reads a VQA JSONL (image, question, answers); pass it with --jsonl.")
    for name, value in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    arguments.check_extra_options(args, args.methods)
    out = check_output_dir(args.out)
    dataset = None
    if args.task == "rec":
        dataset, data, name, split = arguments.load_data(args)
        images = rec_images(dataset)
    else:
        from ..data.vqa import load_vqa_jsonl

        images = vqa_images(load_vqa_jsonl(args.jsonl, images=args.images))
        data, name, split = str(Path(args.jsonl).resolve()), Path(args.jsonl).stem, "all"
    state, llava = _load_llava(args)
    budgets = args.budgets or [llava.num_patches, *DEFAULT_PRUNED_BUDGETS]
    arguments.check_run_plan(args, args.methods, budgets, llava)
    from ..evaluation.loop import run_config

    shared = _shared_config(args, data, None)
    shared["text_source"] = None  # CLIP reads the expression (rec) or the question (vqa)
    if args.max_new_tokens is not None:
        shared["options"]["max_new_tokens"] = args.max_new_tokens
    config = {"task": args.task, **run_config(dataset=name, split=split, methods=args.methods, budgets=budgets,
                                              **shared)}  # fmt: skip
    payload = evaluate_answers(
        llava,
        args.task,
        images,
        config,
        out,
        dataset=dataset,
        rank=state.process_index,
        world=state.num_processes,
        barrier=state.wait_for_everyone,
        progress=not args.no_progress,
        method_options={name: arguments.method_options(args, name) for name in args.methods},
    )
    if payload is not None:
        for row in payload["results"]:
            if args.task == "rec":
                value = "n/a" if row["acc@0.5"] is None else f"Acc@0.5 {100 * row['acc@0.5']:.2f}, mean IoU " \
                    f"{100 * row['mean_iou']:.2f}, {row['misses']} without a box"  # fmt: skip
            else:
                value = "n/a" if row["accuracy"] is None else f"accuracy {100 * row['accuracy']:.2f}"
            print(f"{row['method']:>16} @ {row['budget']:>4}: {value}  ({row['count']} questions)")
        print(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    return 0


def run_preset(args: argparse.Namespace) -> int:
    """`--preset`: every split of the preset with one model load, then the paper table (evaluation/paper.py)."""

    from ..evaluation import paper
    from ..evaluation.published import load_paper_table

    preset = paper.get_preset(args.preset)
    given = [f"--{name}" for name in PRESET_FLAGS if getattr(args, name) is not None]
    if given:
        raise LiteLVLMError(
            f"--preset {preset.name} chooses the data sets, splits, methods and budgets itself; "
            f"drop {' and '.join(given)}."
        )
    paper.check_methods(preset)
    arguments.check_extra_options(args, list(preset.methods))
    out = check_output_dir(args.out)
    directory, protocol = _checkpoint_and_protocol(args)
    published = load_paper_table()
    datasets = paper.load_splits(preset, args.data_root, images=args.images)
    state, predictor = _load_predictor(args, directory)
    arguments.check_run_plan(args, list(preset.methods), preset.budgets(predictor.num_patches), predictor)
    if predictor.host.display_name != published.host:
        warnings.warn(
            f"the published numbers are {published.host}'s; the table sets {predictor.host.display_name}'s "
            "beside them for orientation only.",
            stacklevel=1,
        )
    table = paper.run_preset(
        predictor,
        preset,
        datasets,
        _shared_config(args, str(Path(args.data_root).resolve()), protocol),
        out,
        rank=state.process_index,
        world=state.num_processes,
        barrier=state.wait_for_everyone,
        progress=not args.no_progress,
        method_options={name: arguments.method_options(args, name) for name in preset.methods},
    )
    if table is not None:
        for row in table["rows"]:
            ours, theirs = row["ours"]["average"], row["published"]["average"]
            ours = "n/a" if ours is None else f"{ours:.1f}"
            theirs = "n/a" if theirs is None else f"{theirs:.1f}"
            print(f"{row['name']:>16} @ {row['budget']:>4}: average cIoU {ours} (published {theirs})")
        print(
            f"wrote {out / 'paper_table.md'}, {out / 'paper_table.json'}, {out / 'paper_budget_vs_ciou.png'}"
        )
    return 0


def _checkpoint_and_protocol(args: argparse.Namespace):
    """The local checkpoint directory and the protocol (the host's own unless --protocol says otherwise)."""
    from ..evaluation.protocols import check_protocol
    from ..hosts import detect_host
    from ..hosts.registry import local_checkpoint_dir

    directory = local_checkpoint_dir(args.model)
    host, _ = detect_host(directory)
    return directory, check_protocol(args.protocol or host.protocol, host)


def _load_predictor(args: argparse.Namespace, directory):
    """(accelerate's PartialState, the predictor on this process's device)."""
    from ..hosts import GroundingPredictor

    state, device = _process_state(args)
    predictor = GroundingPredictor.from_pretrained(
        directory, clip=args.clip, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    return state, predictor


def _load_llava(args: argparse.Namespace):
    """(accelerate's PartialState, the LLaVA host on this process's device)."""
    from ..hosts.llava import LlavaPredictor
    from ..scoring import DEFAULT_CLIP

    state, device = _process_state(args)
    llava = LlavaPredictor.from_pretrained(
        args.model, clip=args.clip or DEFAULT_CLIP, dtype=arguments.resolve_dtype(args.dtype), device=device
    )
    return state, llava


def _process_state(args: argparse.Namespace):
    """(accelerate's PartialState, this process's device)."""
    from accelerate import PartialState

    state = PartialState(cpu=args.device == "cpu")
    requested = _accelerate_cpu_processes_requested()
    if state.num_processes == 1 and requested > 1:
        warnings.warn(
            f"`accelerate launch --cpu` starts one process whatever --num_processes says ({requested}); for "
            f"{requested} CPU processes run `torchrun --nproc_per_node {requested} -m litelvlm eval ... --device cpu`.",
            stacklevel=1,
        )
    device = (
        str(state.device)
        if state.num_processes > 1 or args.device is None
        else arguments.resolve_device(args.device)
    )
    return state, device


def _accelerate_cpu_processes_requested() -> int:
    """The --num_processes of an `accelerate launch --cpu` that started this process (which then runs a single
    process, silently), read from the launcher's command line; 0 when not launched that way."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() != "true":
        return 0
    try:
        words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # not Linux
        return 0
    for flag, value in zip(words, words[1:]):
        if flag in ("--num_processes", "--num-processes") and value.isdigit():
            return int(value)
    return 0


def _shared_config(args: argparse.Namespace, data: str, protocol: str) -> dict:
    """The run settings besides data set, split, methods and budgets (see evaluation.loop.run_config)."""
    return {
        "data": data,
        "protocol": protocol,
        "seed": args.seed,
        "limit": args.limit,
        "model": args.model,
        "clip": args.clip,
        "dtype": args.dtype,
        "text_source": args.text_source,
        "options": {
            "order": args.order,
            "low_similarity_share": args.low_similarity_share,
            "budget_mode": args.budget_mode,
            "positions": args.positions,
            "extra": dict(args.option),
            **({"share_prefix": True} if args.share_prefix else {}),  # absent when off: older runs resume
            **({"images_per_batch": args.images_per_batch} if args.images_per_batch > 1 else {}),
        },
    }
