"""Argument types and checks shared by the commands (each failure is one sentence naming the value)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..checkpoints import DTYPE_NAMES
from ..errors import LiteLVLMError
from ..prompts import TEXT_SOURCES
from ..selection import list_methods


def budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"budget must be a whole number of visual tokens such as 64, got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"budget must be at least 1 visual token, got {value}")
    return value


def whole_number(minimum: int):
    """An argparse type: an int >= minimum (checked at parse time, before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a whole number; pass one such as {max(minimum, 1)}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; pass a whole number >= {minimum}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


def share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"the share must be a number in [0, 1], got {text!r}")
    return value


def method(text: str) -> str:
    if text not in list_methods():
        raise argparse.ArgumentTypeError(
            f"unknown method {text!r}; choose one of: {', '.join(list_methods())}"
        )
    return text


def method_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one method, e.g. litelvlm,random")
    twice = _first_repeat(names)
    if twice is not None:
        raise argparse.ArgumentTypeError(f"method {twice} is listed twice in {text!r}; list each method once")
    return [method(name) for name in names]


def budget_list(text: str) -> list[int]:
    values = [budget(part.strip()) for part in text.split(",") if part.strip()]
    if not values:
        raise argparse.ArgumentTypeError("give at least one budget, e.g. 576,192,64")
    twice = _first_repeat(values)
    if twice is not None:
        raise argparse.ArgumentTypeError(f"budget {twice} is listed twice in {text!r}; list each budget once")
    return values


def _first_repeat(values: list):
    seen = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def add_device_arguments(parser: argparse.ArgumentParser, default_dtype: str = "float32") -> None:
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=default_dtype, choices=DTYPE_NAMES, help="model dtype")


def resolve_device(name: str | None) -> str:
    """--device as a device this machine has (default: cuda if available, else cpu)."""
    from ..checkpoints import check_device

    return str(check_device(name))


def resolve_dtype(name: str):
    from ..checkpoints import check_dtype

    return check_dtype(name)


def add_method_arguments(
    parser: argparse.ArgumentParser, *, seed_help: str = "seed of the random method", text_source: bool = True
) -> None:
    """Options of the selection methods, shared by the commands that run them (`text_source`: whether CLIP's
    text can be chosen; commands whose CLIP text is the question itself go without)."""
    parser.add_argument(
        "--order",
        choices=("paper", "raster"),
        default="paper",
        help="token order of litelvlm, prumerge and prumerge_plus: their published code's, or raster",
    )
    parser.add_argument(
        "--low-similarity-share",
        type=share,
        default=1.0,
        help="litelvlm: share of the budget for low-similarity tokens (1.0 = the authors' budget // T)",
    )
    if text_source:
        parser.add_argument(
            "--text-source",
            choices=TEXT_SOURCES,
            default="questions",
            help="what CLIP scores: the questions asked ('Please segment X in this image.', the authors' current "
            "code) or the raw expressions",
        )
    parser.add_argument(
        "--budget-mode",
        choices=("average", "final"),
        default="average",
        help="in-LLM methods (fastv, pdrop, sparsevlm): the budget is the average number of visual tokens per "
        "decoder layer, or the number the deepest layers keep",
    )
    parser.add_argument("--seed", type=whole_number(0), default=0, help=seed_help)
    parser.add_argument(
        "--option",
        type=method_option,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further option of the method(s) that take it (repeatable), e.g. important_ratio=0.75 "
        "(vispruner), polarity=paper or text_mode=split (trim), count_extra=false (prumerge, prumerge_plus, "
        "trim), grid=square (downsample, pool); see docs/methods.md",
    )


def add_positions_argument(parser: argparse.ArgumentParser) -> None:
    """RoPE positions of the kept visual tokens (commands that run the LLM)."""
    from ..hosts.llm import POSITIONS

    parser.add_argument(
        "--positions",
        choices=POSITIONS,
        default="compact",
        help="RoPE positions of kept visual tokens: consecutive (compact, the authors' code) or each token's "
        "position among all patches (original)",
    )
    parser.add_argument(
        "--share-prefix",
        action="store_true",
        help="run the tokens every conversation of a batch shares (system prompt; for text-independent methods "
        "through the image) once: faster, equal up to float rounding (before-LLM methods)",
    )


def method_option(text: str) -> tuple[str, object]:
    """NAME=VALUE with VALUE read as a bool (true/false), an int, a float or else a string."""
    name, equals, raw = text.partition("=")
    if not equals or not name.strip() or not raw.strip():
        raise argparse.ArgumentTypeError(
            f"an option is NAME=VALUE, such as important_ratio=0.75, got {text!r}"
        )
    raw = raw.strip()
    value: object = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
    return name.strip(), value


def check_extra_options(args: argparse.Namespace, methods: list[str]) -> None:
    """Every --option must be taken by at least one of the methods run (else it would be silently ignored)."""
    from ..selection import get_method

    for name, _ in args.option:
        if not any(name in get_method(method).option_names for method in methods):
            raise LiteLVLMError(
                f"--option {name!r} is not an option of {', '.join(methods)}; see docs/methods.md for each "
                "method's options."
            )


def method_options(args: argparse.Namespace, name: str) -> dict:
    """The subset of the method flags (and of the --option values) that method `name` accepts."""
    from ..selection import get_method

    method = get_method(name)
    options = method.supported(
        order=args.order,
        low_similarity_share=args.low_similarity_share,
        seed=args.seed,
        budget_mode=args.budget_mode,
    )
    extra = {key: value for key, value in getattr(args, "option", []) if key in method.option_names}
    return {**options, **extra}


def check_run_plan(args: argparse.Namespace, methods: list[str], budgets: list[int], predictor) -> None:
    """Every method x budget x option combination the run will make is feasible on this model (before any
    work is done or any file written)."""
    from ..selection.feasibility import check_combinations

    check_combinations(
        methods,
        budgets,
        {name: method_options(args, name) for name in methods},
        grid=predictor.scorer.grid,
        num_layers=predictor.num_llm_layers,
    )


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--data-root", help="directory holding refcoco/, refcoco+/, refcocog/ and the COCO images"
    )
    source.add_argument("--jsonl", help="a JSONL data set: one referent per line (see docs/evaluation.md)")
    parser.add_argument(
        "--dataset", choices=("refcoco", "refcoco+", "refcocog"), default="refcoco", help="with --data-root"
    )
    parser.add_argument(
        "--split", default="val", help="val, testA, testB (refcoco, refcoco+); val, test (refcocog)"
    )
    parser.add_argument(
        "--images",
        help="COCO train2014 directory (default: found under --data-root); with --jsonl: the folder its relative "
        "image paths are read from first (then the JSONL file's folder)",
    )
    parser.add_argument(
        "--limit", type=whole_number(1), help="only the first N images, sorted by image id (default: all)"
    )


def load_data(args: argparse.Namespace):
    """(dataset, its resolved path, name, split) from --data-root/--dataset/--split or --jsonl."""
    from ..data import load_jsonl, load_refcoco

    if args.jsonl:
        return (
            load_jsonl(args.jsonl, images=args.images),
            str(Path(args.jsonl).resolve()),
            Path(args.jsonl).stem,
            "all",
        )
    dataset = load_refcoco(args.data_root, args.dataset, args.split, images=args.images)
    return dataset, str(Path(args.data_root).resolve()), args.dataset, args.split
