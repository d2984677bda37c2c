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
# Fields of the run configuration that must match for a run to be resumed (segmentation runs have no task).
IDENTITY_FIELDS = ("task", "data", "dataset", "split", "protocol", "seed", "limit", "model", "clip", "dtype",
                   "text_source", "options", "methods", "budgets")  # fmt: skip


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
    pending = [(i, image) for i, image in mine if any(unit_key(image.image_id, m, b) not in done for m in methods
                                                      for b in budgets)]  # fmt: skip
    group_size = config.get("options", {}).get("images_per_batch", 1)
    for first_of_group in range(0, len(pending), group_size):
        group = pending[first_of_group : first_of_group + group_size]
        truths = [{} for _ in group]
        paths = [image.path for _, image in group]
        predictor.set_image(paths if len(paths) > 1 else paths[0])
        unpruned = {}  # group position -> the prediction at a budget >= the patch count, the same for every method
        for method in methods:
            for budget in budgets:
                needing = [
                    k
                    for k, (_, image) in enumerate(group)
                    if unit_key(image.image_id, method, budget) not in done
                ]
                if not needing:
                    continue
                full = budget >= predictor.num_patches
                predictions = {k: unpruned[k] for k in needing if full and k in unpruned}
                missing = [k for k in needing if k not in predictions]
                if missing:
                    predictions.update(
                        _predict_group(
                            predictor, plans, group, missing, method, budget, config, method_options
                        )
                    )
                if full:
                    unpruned.update(predictions)
                for k in needing:
                    image_index, image = group[k]
                    records = _records(dataset, image_index, image, plans[image_index], predictions[k], method,
                                       budget, truths[k], predictor.image_timings)  # fmt: skip
                    sums[(method, budget)].extend((r["intersection"], r["union"]) for r in records)
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
    directory: Path,
    records: list[dict],
    config: dict,
    remedy: str = "run the command again",
    writer: Callable[[Path, list[dict], dict], dict] = write_reports,
) -> dict:
    """Sort a run's records, check that every unit has them (else one sentence ending in `remedy`), and write
    records.jsonl and the aggregate reports (`writer`: the task's)."""
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
    return writer(directory, records, config)


def _records(dataset, image_index: int, image, plan, prediction, method: str, budget: int, truths: dict,
             image_timings: dict) -> list[dict]:  # fmt: skip
    """One unit's records: each planned query's intersection and union with its ground truth (`truths` caches
    the image's ground-truth masks by ref_id across units)."""
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
                "image_timings": image_timings,
            }
        )
    return records


def _predict_group(predictor, plans, group, which: list[int], method: str, budget: int, config: dict,
                   method_options: dict | None) -> dict:  # fmt: skip
    """Predictions for the set images at group positions `which` with one method at one budget, as one padded
    batch; a seeded method (random) draws each image's subset from that image's own seed, so it runs image by
    image (on the same set images)."""
    from ..selection import get_method

    seeded = "seed" in get_method(method).option_names
    batches = [[k] for k in which] if seeded else [which]
    predictions = {}
    for batch in batches:
        chosen = [plans[group[k][0]].queries if k in batch else None for k in range(len(group))]
        results = predictor.predict_batch(
            [None if queries is None else [q.sentence for q in queries] for queries in chosen],
            budget=budget,
            method=method,
            question_templates=[None if qs is None else [q.question_template for q in qs] for qs in chosen],
            answer_templates=[None if qs is None else [q.answer_template for q in qs] for qs in chosen],
            turns_per_conversation=plans[group[batch[0]][0]].turns_per_conversation,
            text_source=config.get("text_source", "questions"),
            positions=config.get("options", {}).get("positions", "compact"),
            share_prefix=config.get("options", {}).get("share_prefix", False),
            **_options_for(method, group[batch[0]][1].image_id, config["seed"], method_options),
        )
        predictions.update({k: results[k] for k in batch})
    return predictions


def _options_for(method: str, image_id, seed: int, method_options: dict | None) -> dict:
    """A method's options; a seeded method (random) gets a seed of its own per image, so its subsets differ
    from image to image yet stay reproducible."""
    from ..selection import get_method

    options = dict((method_options or {}).get(method, {}))
    if "seed" in get_method(method).option_names:
        options["seed"] = int(image_generator(seed, image_id).integers(2**31))
    return options
