"""The evaluation loop: images x methods x budgets, sharded over processes, resumable at any moment.

Text-independent work (CLIP vision pass, SAM image embedding, per-image CLIP scores) is done once per image
and shared by every method, budget and expression. A budget >= the number of patches is the unpruned model
whatever the method (the predictor's `full_budget="identity"`), so it is predicted once per image and its masks
are recorded under every method asked for at that budget. Each (image, method, budget) unit's records are
written ahead (see records.py) before the next unit starts; the aggregates are computed from the records at the
end.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..errors import LiteLVLMError
from ..io import format_json, write_atomic
from .metrics import intersection_union, summarize
from .protocols import image_generator, plan_image
from .records import RecordLog
from .report import write_reports
from .run_directory import read_config, run_lock

RUN_FILE = "run.json"
# Fields of the run configuration that must match for a run to be resumed.
IDENTITY_FIELDS = ("data", "dataset", "split", "protocol", "seed", "limit", "model", "clip", "dtype", "text_source",
                   "options", "methods", "budgets")  # fmt: skip


def unit_key(image_id, method: str, budget: int) -> str:
    return f"{image_id}|{method}|{budget}"


def kept_hash(indices: list[int]) -> str:
    return hashlib.sha1(",".join(map(str, indices)).encode()).hexdigest()[:16]


def run_config(
    *, data, dataset, split, protocol, seed, limit, methods, budgets, model, clip, dtype, text_source, options
) -> dict:
    """The configuration of one run (what run.json holds before `num_images` is added), in its field order."""
    return {
        "data": data,
        "dataset": dataset,
        "split": split,
        "protocol": protocol,
        "seed": seed,
        "limit": limit,
        "methods": list(methods),
        "budgets": list(budgets),
        "model": model,
        "clip": clip,
        "dtype": dtype,
        "text_source": text_source,
        "options": options,
    }


def prepare_run(directory: Path, config: dict, is_main: bool) -> None:
    """Create the run directory with its run.json, or check that an existing one is the same run."""
    path = directory / RUN_FILE
    if path.exists():
        previous = read_config(directory, RUN_FILE, "run.json")
        changed = [name for name in IDENTITY_FIELDS if previous.get(name) != config.get(name)]
        if changed:
            problem = (
                f"{str(directory)!r} holds a run with a different {', '.join(changed)}; "
                "resume it with the same arguments, or"
            )
            raise LiteLVLMError(
                f"{problem} use another run directory.", cli_message=f"{problem} pass another --out."
            )
        return
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, format_json(config).encode())


def evaluate(
    predictor,
    dataset,
    config: dict,
    directory: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
    method_options: dict | None = None,
) -> dict | None:
    """Run (or resume) an evaluation; returns the results payload on rank 0 (None elsewhere).

    config: methods, budgets, protocol, seed, limit, text_source and the identity fields saved in run.json.
    Images are sharded round-robin over `world` processes; `barrier` synchronises them before merging.
    """
    directory = Path(directory)
    with run_lock(directory, rank):
        return _evaluate(
            predictor, dataset, config, directory, rank, world, barrier, progress, method_options
        )


def _evaluate(predictor, dataset, config, directory, rank, world, barrier, progress, method_options):
    """`evaluate` inside the run directory's lock."""
    methods, budgets = config["methods"], config["budgets"]
    images = dataset.images[: config["limit"]] if config.get("limit") else list(dataset.images)
    config = {**config, "num_images": len(images)}
    prepare_run(directory, config, rank == 0)
    barrier()
    log = RecordLog(directory, rank)
    done = log.completed_units()
    mine = [(index, image) for index, image in enumerate(images) if index % world == rank]
    plans = {index: plan_image(image, config["protocol"], config["seed"]) for index, image in mine}
    units = [(index, m, b) for index, _ in mine for m in methods for b in budgets]
    already = [(i, m, b) for i, m, b in units if unit_key(images[i].image_id, m, b) in done]
    if already and progress and rank == 0:
        tqdm.write(
            f"resuming {str(directory)!r}: {len(already)} of {len(units)} image x method x budget units already "
            "done",
            file=sys.stderr,
        )
    bar = tqdm(
        total=sum(len(plans[i].queries) for i, _, _ in units),
        initial=sum(len(plans[i].queries) for i, _, _ in already),
        unit="expr",
        disable=not progress or rank != 0,
        desc=f"{config.get('dataset', 'eval')}",
    )
    sums = defaultdict(list)
    for image_index, image in mine:
        todo = [(m, b) for m in methods for b in budgets if unit_key(image.image_id, m, b) not in done]
        if not todo:
            continue
        plan = plans[image_index]
        truths = {}
        predictor.set_image(image.path)
        unpruned = None  # the prediction at a budget >= the patch count, the same for every method
        for method, budget in todo:
            full = budget >= predictor.num_patches
            if full and unpruned is not None:
                prediction = unpruned
            else:
                prediction = _predict(predictor, plan, method, budget, image.image_id, config, method_options)
            if full:
                unpruned = prediction
            records = []
            for number, (query, result) in enumerate(zip(plan.queries, prediction.results)):
                referent = query.referent
                if referent.ref_id not in truths:
                    truths[referent.ref_id] = dataset.mask(referent)
                if result.mask.shape != truths[referent.ref_id].shape:  # both in the displayed frame
                    raise LiteLVLMError(
                        f"image {str(image.path)!r} gives a {result.mask.shape} mask but its ground truth is "
                        f"{truths[referent.ref_id].shape}; the file does not match its annotations — restore the "
                        "original image."
                    )
                intersection, union = intersection_union(result.mask, truths[referent.ref_id])
                records.append(
                    {
                        "image_id": image.image_id,
                        "image_index": image_index,
                        "ref_id": referent.ref_id,
                        "sentence": query.sentence,
                        "sentence_index": query.sentence_index,
                        "query": number,
                        "conversation": result.conversation,
                        "question_template": query.question_template,
                        "answer_template": query.answer_template,
                        "method": method,
                        "budget": budget,
                        "num_visual_tokens": prediction.num_visual_tokens,
                        "average_visual_tokens": prediction.average_visual_tokens,
                        "intersection": intersection,
                        "union": union,
                        "mask_area": int(result.mask.sum()),
                        "gt_area": int((truths[referent.ref_id] == 1).sum()),
                        "kept_hash": kept_hash(result.indices),
                        "timings": prediction.timings,
                        "image_timings": predictor.image_timings,
                    }
                )
                sums[(method, budget)].append((intersection, union))
            log.append_unit(unit_key(image.image_id, method, budget), records)
            bar.update(len(records))
        first = next(iter(sums))
        bar.set_postfix_str(f"cIoU {first[0]}@{first[1]} {100 * summarize(sums[first])['ciou']:.1f}")
    bar.close()
    barrier()
    if rank != 0:
        return None
    return finish(directory, log, config)


def finish(directory: Path, log: RecordLog, config: dict) -> dict:
    """Merge every process's records (sorted, complete units only) and write the aggregate reports."""
    return finish_records(directory, log.all_records(), config)


def finish_records(
    directory: Path, records: list[dict], config: dict, remedy: str = "run the command again"
) -> dict:
    """Sort a run's records, check that every unit has them (else one sentence ending in `remedy`), and write
    records.jsonl and the aggregate reports."""
    order = {m: i for i, m in enumerate(config["methods"])}
    border = {b: i for i, b in enumerate(config["budgets"])}
    records = sorted(
        (r for r in records if r["method"] in order and r["budget"] in border),
        key=lambda r: (r["image_index"], order[r["method"]], border[r["budget"]], r["query"]),
    )
    units = {unit_key(r["image_id"], r["method"], r["budget"]) for r in records}
    missing = config["num_images"] * len(order) * len(border) - len(units)
    if missing:
        raise LiteLVLMError(f"{missing} image x method x budget units have no records yet; {remedy}.")
    lines = "".join(
        json.dumps({k: v for k, v in r.items() if k not in ("unit", "unit_size")}) + "\n" for r in records
    )
    write_atomic(directory / "records.jsonl", lines.encode())
    return write_reports(directory, records, config)


def _predict(predictor, plan, method: str, budget: int, image_id, config: dict, method_options: dict | None):
    """The predictor's masks for one image's planned queries with one method at one budget."""
    return predictor.predict(
        [query.sentence for query in plan.queries],
        budget=budget,
        method=method,
        question_templates=[query.question_template for query in plan.queries],
        answer_templates=[query.answer_template for query in plan.queries],
        turns_per_conversation=plan.turns_per_conversation,
        text_source=config.get("text_source", "questions"),
        positions=config.get("options", {}).get("positions", "compact"),
        share_prefix=config.get("options", {}).get("share_prefix", False),
        **_options_for(method, image_id, config["seed"], method_options),
    )


def _options_for(method: str, image_id, seed: int, method_options: dict | None) -> dict:
    """A method's options; a seeded method (random) gets a seed of its own per image, so its subsets differ
    from image to image yet stay reproducible."""
    from ..selection import get_method

    options = dict((method_options or {}).get(method, {}))
    if "seed" in get_method(method).option_names:
        options["seed"] = int(image_generator(seed, image_id).integers(2**31))
    return options
