"""Evaluations whose answer is text: box grounding (REC) and VQA, with a LLaVA host; images x methods x budgets,
sharded over processes, resumable at any moment, with the run directory, write-ahead records and lock of the
segmentation loop (`loop.py`).

REC: every sentence of every referent is its own question (`boxes.REC_PROMPT`), on the image padded to a square
as LLaVA-1.5 was trained (`pad_to_square`); the answer's first box (`parse_box`) is mapped back to the image and
scored against the annotated box (IoU; Acc@0.5). An answer without a box is a counted miss (IoU 0). CLIP scores
the patches against the expression itself.
VQA: each question with `vqa.VQA_PROMPT`; the greedy answer is scored with the VQAv2 accuracy.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..images import load_image
from ..io import format_json, write_atomic
from .boxes import REC_PROMPT, box_from_square, box_iou, fill_from_mean, pad_to_square, parse_box, rec_summary
from .loop import _options_for, finish_records, kept_hash, prepare_run, unit_key
from .records import RecordLog
from .report import plot_budget_vs_metric
from .run_directory import run_lock
from .vqa import VQA_PROMPT, vqa_accuracy, vqa_summary

TASKS = ("rec", "vqa")
DEFAULT_MAX_NEW_TOKENS = {"rec": 48, "vqa": 16}  # a box is ~25 LLaMA tokens; VQA answers are a word or phrase
METRICS = {"rec": ("acc@0.5", "Acc@0.5"), "vqa": ("accuracy", "VQA accuracy")}  # task -> (field, label)


@dataclass(frozen=True)
class AnswerImage:
    """One image and its questions: REC (referent, sentence index) pairs, or VQA samples."""

    image_id: int | str
    path: Path
    queries: tuple


def rec_images(dataset) -> list[AnswerImage]:
    """Every sentence of every referent of a referring data set (`litelvlm.data`), image by image."""
    return [
        AnswerImage(
            entry.image_id,
            entry.path,
            tuple(
                (referent, index) for referent in entry.referents for index in range(len(referent.sentences))
            ),
        )
        for entry in dataset.images
    ]


def vqa_images(samples) -> list[AnswerImage]:
    """VQA samples (`litelvlm.data.vqa`) grouped by image, in the order images first appear."""
    groups: dict[Path, list] = {}
    for sample in samples:
        groups.setdefault(sample.image_path, []).append(sample)
    return [AnswerImage(str(path), path, tuple(group)) for path, group in groups.items()]


def evaluate_answers(
    llava,
    task: str,
    images: list[AnswerImage],
    config: dict,
    directory: str | Path,
    *,
    dataset=None,
    rank: int = 0,
    world: int = 1,
    barrier=lambda: None,
    progress: bool = True,
    method_options: dict | None = None,
) -> dict | None:
    """Run (or resume) a REC or VQA evaluation; returns the results payload on rank 0 (None elsewhere).
    dataset: the referring data set (REC: the ground-truth boxes)."""
    directory = Path(directory)
    with run_lock(directory, rank):
        images = images[: config["limit"]] if config.get("limit") else images
        config = {**config, "num_images": len(images)}
        prepare_run(directory, config, rank == 0)
        barrier()
        log = RecordLog(directory, rank)
        done = log.completed_units()
        methods, budgets = config["methods"], config["budgets"]
        mine = [(index, image) for index, image in enumerate(images) if index % world == rank]
        units = [(i, m, b) for i, _ in mine for m in methods for b in budgets]
        already = [(i, m, b) for i, m, b in units if unit_key(images[i].image_id, m, b) in done]
        if already and progress and rank == 0:
            tqdm.write(f"resuming {str(directory)!r}: {len(already)} of {len(units)} image x method x budget units "
                       "already done", file=sys.stderr)  # fmt: skip
        bar = tqdm(total=sum(len(images[i].queries) for i, _, _ in units),
                   initial=sum(len(images[i].queries) for i, _, _ in already), unit="question",
                   disable=not progress or rank != 0, desc=task)  # fmt: skip
        for image_index, image in mine:
            todo = [(m, b) for m in methods for b in budgets if unit_key(image.image_id, m, b) not in done]
            if not todo:
                continue
            picture = load_image(image.path)
            offset = None
            if task == "rec":
                fill = fill_from_mean(llava.processor.image_processor.image_mean)
                square, offset = pad_to_square(picture, fill)
                llava.set_image(square)
            else:
                llava.set_image(picture)
            unpruned = None
            for method, budget in todo:
                full = budget >= llava.num_patches
                batch = unpruned if full and unpruned is not None else _answer(
                    llava, task, image, method, budget, config, method_options
                )  # fmt: skip
                if full:
                    unpruned = batch
                records = [
                    {
                        "image_id": image.image_id,
                        "image_index": image_index,
                        "query": number,
                        "method": method,
                        "budget": budget,
                        "num_visual_tokens": batch.num_visual_tokens,
                        "answer": answer.text,
                        "kept_hash": kept_hash(answer.indices),
                        **_score(task, query, answer.text, dataset, picture.size, offset),
                        "timings": batch.timings,
                        "image_timings": llava.image_timings,
                    }
                    for number, (query, answer) in enumerate(zip(image.queries, batch.answers))
                ]
                log.append_unit(unit_key(image.image_id, method, budget), records)
                bar.update(len(records))
        bar.close()
        barrier()
        if rank != 0:
            return None
        writer = lambda directory, records, config: write_answer_reports(directory, records, config, task)  # noqa: E731
        return finish_records(directory, log.all_records(), config, writer=writer)


def _answer(llava, task: str, image: AnswerImage, method: str, budget: int, config: dict, method_options):
    if task == "rec":
        sentences = [referent.sentences[index] for referent, index in image.queries]
        questions = [REC_PROMPT.format(expression=sentence) for sentence in sentences]
    else:
        sentences = [sample.question for sample in image.queries]
        questions = [VQA_PROMPT.format(question=question) for question in sentences]
    options = config.get("options", {})
    return llava.answer(
        questions,
        clip_texts=sentences,
        method=method,
        budget=budget,
        max_new_tokens=options.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS[task]),
        positions=options.get("positions", "compact"),
        share_prefix=options.get("share_prefix", False),
        **_options_for(method, image.image_id, config["seed"], method_options),
    )


def _score(task: str, query, text: str, dataset, size: tuple[int, int], offset) -> dict:
    """A record's task fields: REC the parsed box (image pixels), the ground truth, IoU (None: no box);
    VQA the question, the human answers and the accuracy."""
    if task == "vqa":
        return {"question_id": query.id, "question": query.question, "answers": list(query.answers),
                "accuracy": vqa_accuracy(text, query.answers)}  # fmt: skip
    referent, index = query
    parsed = parse_box(text)
    truth = dataset.box(referent)
    box = None if parsed.box is None else box_from_square(parsed.box, size, offset)
    return {
        "ref_id": referent.ref_id,
        "sentence": referent.sentences[index],
        "sentence_index": index,
        "box": None if box is None else [round(v, 2) for v in box],
        "gt_box": list(truth),
        "iou": None if box is None else box_iou(box, truth),
        "boxes_found": parsed.count,
        "box_flags": [flag for flag in ("reordered", "clipped") if getattr(parsed, flag)],
    }


def aggregate_answers(records: list[dict], methods: list[str], budgets: list[int], task: str) -> list[dict]:
    """One row per (method, budget): REC Acc@0.5, mean IoU, misses; VQA accuracy; and the count."""
    groups = defaultdict(list)
    for record in records:
        groups[(record["method"], record["budget"])].append(record)
    rows = []
    for method in methods:
        for budget in budgets:
            mine = groups[(method, budget)]
            summary = (
                rec_summary([r["iou"] for r in mine])
                if task == "rec"
                else vqa_summary(r["accuracy"] for r in mine)
            )
            tokens = mine[0]["num_visual_tokens"] if mine else None
            rows.append({"method": method, "budget": budget, "num_visual_tokens": tokens, **summary})
    return rows


def write_answer_reports(directory: Path, records: list[dict], config: dict, task: str) -> dict:
    """results.json, results.md (methods down, budgets across) and budget_vs_<metric>.png."""
    methods, budgets = config["methods"], config["budgets"]
    rows = aggregate_answers(records, methods, budgets, task)
    payload = {"task": task, "results": rows, "config": config}
    write_atomic(directory / "results.json", format_json(payload).encode())
    field, label = METRICS[task]
    by_key = {(row["method"], row["budget"]): row for row in rows}
    lines = [
        f"# {config.get('dataset', '')} {config.get('split', '')} ({task})".replace("  ", " "),
        "",
        "| method | " + " | ".join(f"{budget} tokens" for budget in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for method in methods:
        cells = []
        for budget in budgets:
            row = by_key[(method, budget)]
            value = row[field]
            cell = "—" if value is None else f"{100 * value:.2f}"
            if task == "rec" and value is not None:
                cell += f" / {100 * row['mean_iou']:.2f} ({row['misses']} misses)"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    count = max((row["count"] for row in rows), default=0)
    legend = "Acc@0.5 / mean IoU (%)" if task == "rec" else "VQA accuracy (%)"
    lines += ["", f"{legend}, {count} questions per cell."]
    write_atomic(directory / "results.md", ("\n".join(lines) + "\n").encode())
    plot_budget_vs_metric(rows, methods, directory / f"budget_vs_{field.replace('@', '')}.png", field, label)
    return payload
