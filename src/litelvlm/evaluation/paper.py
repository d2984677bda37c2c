"""The `paper` preset: the LiteLVLM paper's method x budget grid on all 8 RefCOCO/+/g splits in one run.

A preset run directory holds preset.json (what was asked, checked when the run is resumed) and one ordinary
evaluation sub-run per split (`refcoco_val/`, ..., `refcocog_test/`), each produced by `evaluate` with its own
run.json, write-ahead records and reports, so every split resumes, shards and reports like a plain run. The
model is loaded once for all of them. Afterwards the paper table and plot are written at the run root
(paper_table.py).

Every method of the grid also runs at the model's full patch count; that budget is the unpruned model whatever
the method, so the loop predicts it once per image (see loop.py) and the table shows it as one "full" row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LiteLVLMError
from ..io import format_json, write_atomic
from .loop import evaluate
from .run_directory import read_config, run_lock

PRESET_FILE = "preset.json"
PAPER_SPLITS = (
    ("refcoco", "val"),
    ("refcoco", "testA"),
    ("refcoco", "testB"),
    ("refcoco+", "val"),
    ("refcoco+", "testA"),
    ("refcoco+", "testB"),
    ("refcocog", "val"),
    ("refcocog", "test"),
)
DATASET_TITLES = {"refcoco": "RefCOCO", "refcoco+": "RefCOCO+", "refcocog": "RefCOCOg"}
# The fields of preset.json that must match for a preset run to be resumed.
IDENTITY_FIELDS = ("preset", "runs", "methods", "budgets", "data", "protocol", "seed", "limit", "model", "clip",
                   "dtype", "text_source", "options")  # fmt: skip


@dataclass(frozen=True)
class Preset:
    """A grid of methods x budgets over data splits; the full budget is the model's patch count."""

    name: str
    methods: tuple[str, ...]
    pruned_budgets: tuple[int, ...]
    splits: tuple[tuple[str, str], ...]

    def budgets(self, num_patches: int) -> list[int]:
        """The full budget first, then the pruned budgets below it."""
        return [num_patches, *(budget for budget in self.pruned_budgets if budget < num_patches)]

    def runs(self) -> list[str]:
        """The sub-run directory name of each split, in the table's column order."""
        return [split_key(dataset, split) for dataset, split in self.splits]


PRESETS = {
    "paper": Preset(
        "paper",
        methods=("trim", "fastv", "prumerge", "visionzip", "vispruner", "litelvlm"),
        pruned_budgets=(192, 128, 64),
        splits=PAPER_SPLITS,
    )
}


def split_key(dataset: str, split: str) -> str:
    return f"{dataset}_{split}"


def split_title(key: str) -> str:
    """'refcoco+_testA' -> 'RefCOCO+ testA'."""
    dataset, split = key.split("_", 1)
    return f"{DATASET_TITLES.get(dataset, dataset)} {split}"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise LiteLVLMError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}.")
    return PRESETS[name]


def check_methods(preset: Preset) -> None:
    """One sentence if a method of the preset is not registered in this installation (looked up at run time)."""
    from ..selection import list_methods

    known = list_methods()
    for method in preset.methods:
        if method not in known:
            raise LiteLVLMError(
                f"the {preset.name} preset runs method {method!r}, which this installation of litelvlm does not "
                f"register (it has: {', '.join(known)}); update litelvlm or run eval with --methods instead."
            )


def load_splits(preset: Preset, data_root, images=None) -> dict:
    """Every split of the preset, loaded (and its image files checked) before any model runs."""
    from ..data import load_refcoco

    return {
        split_key(dataset, split): load_refcoco(data_root, dataset, split, images=images)
        for dataset, split in preset.splits
    }


def preset_record(preset: Preset, budgets: list[int], base: dict) -> dict:
    """What preset.json holds: the preset, its sub-runs, methods and budgets, and the shared run settings."""
    shared = {
        name: base[name] for name in IDENTITY_FIELDS if name not in ("preset", "runs", "methods", "budgets")
    }
    return {
        "preset": preset.name,
        "runs": preset.runs(),
        "methods": list(preset.methods),
        "budgets": budgets,
        **shared,
    }


def prepare_preset(directory: Path, record: dict, is_main: bool) -> None:
    """Create the preset run directory with its preset.json, or check that an existing one is the same run."""
    path = directory / PRESET_FILE
    if path.exists():
        previous = read_config(directory, PRESET_FILE, "preset.json")
        changed = [name for name in IDENTITY_FIELDS if previous.get(name) != record.get(name)]
        if changed:
            problem = (
                f"{str(directory)!r} holds a preset run with a different {', '.join(changed)}; "
                "resume it with the same arguments, or"
            )
            raise LiteLVLMError(
                f"{problem} use another run directory.", cli_message=f"{problem} pass another --out."
            )
        return
    if is_main:
        directory.mkdir(parents=True, exist_ok=True)
        write_atomic(path, format_json(record).encode())


def run_preset(
    predictor,
    preset: Preset,
    datasets: dict,
    base: dict,
    directory: str | Path,
    *,
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] = lambda: None,
    progress: bool = True,
    method_options: dict | None = None,
) -> dict | None:
    """Run (or resume) every split of the preset with one predictor; returns the paper table on rank 0.

    datasets: from `load_splits`. base: the run settings shared by the splits (data, protocol, seed, limit,
    model, clip, dtype, text_source, options), as `litelvlm.evaluation.loop.run_config` takes them.
    """
    directory = Path(directory)
    with run_lock(directory, rank):
        return _run_preset(
            predictor, preset, datasets, base, directory, rank, world, barrier, progress, method_options
        )


def _run_preset(predictor, preset, datasets, base, directory, rank, world, barrier, progress, method_options):
    """`run_preset` inside the preset directory's lock."""
    from .loop import run_config
    from .paper_table import write_paper_reports

    budgets = preset.budgets(predictor.num_patches)
    record = preset_record(preset, budgets, base)
    prepare_preset(directory, record, rank == 0)
    barrier()
    payloads = {}
    for dataset_name, split in preset.splits:
        key = split_key(dataset_name, split)
        config = run_config(
            dataset=dataset_name, split=split, methods=preset.methods, budgets=budgets, **base
        )
        payloads[key] = evaluate(
            predictor,
            datasets[key],
            config,
            directory / key,
            rank=rank,
            world=world,
            barrier=barrier,
            progress=progress,
            method_options=method_options,
        )
    if rank != 0:
        return None
    return write_paper_reports(directory, record, payloads)


def rebuild_preset(directory: str | Path) -> dict:
    """Rebuild every split's reports from its records, then the paper table and plot (`litelvlm report`)."""
    from .paper_table import write_paper_reports
    from .rebuild import rebuild_run

    directory = Path(directory)
    record = read_config(directory, PRESET_FILE, "preset.json")
    runs = record.get("runs")
    if not isinstance(runs, list) or not runs:
        raise LiteLVLMError(
            f"{str(directory / PRESET_FILE)!r} lists no sub-runs; it is not a preset.json litelvlm wrote."
        )
    for key in runs:
        if not (directory / key).is_dir():
            raise LiteLVLMError(
                f"preset run {str(directory)!r} has no sub-run {key!r} yet; finish it with the same eval "
                "command first."
            )
    payloads = {key: rebuild_run(directory / key) for key in runs}
    return write_paper_reports(directory, record, payloads)
