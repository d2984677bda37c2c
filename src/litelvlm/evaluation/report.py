"""Aggregates of the per-expression records: results.json, a Markdown table and the budget-vs-cIoU plot."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ..io import figure_png, format_json, write_atomic
from .metrics import summarize


def aggregate(records: list[dict], methods: list[str], budgets: list[int]) -> list[dict]:
    """One row per (method, budget) in the requested order: cIoU, gIoU, precision@X, count."""
    pairs, tokens = defaultdict(list), {}
    for record in records:
        key = (record["method"], record["budget"])
        pairs[key].append((record["intersection"], record["union"]))
        tokens[key] = record.get("average_visual_tokens")
    return [
        {
            "method": method,
            "budget": budget,
            "average_visual_tokens": tokens.get((method, budget)),
            **summarize(pairs[(method, budget)]),
        }
        for method in methods
        for budget in budgets
    ]


def markdown_table(rows: list[dict], methods: list[str], budgets: list[int]) -> str:
    """Methods down, budgets across; each cell 'cIoU / gIoU' in percent."""
    by_key = {(row["method"], row["budget"]): row for row in rows}
    header = "| method | " + " | ".join(f"{budget} tokens" for budget in budgets) + " |"
    lines = [header, "|---|" + "---|" * len(budgets)]
    for method in methods:
        cells = []
        for budget in budgets:
            row = by_key[(method, budget)]
            cells.append("—" if row["ciou"] is None else f"{100 * row['ciou']:.2f} / {100 * row['giou']:.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    count = max((row["count"] for row in rows), default=0)
    return "\n".join(lines) + f"\n\ncIoU / gIoU (%), {count} expressions per cell.\n"


def plot_budget_vs_ciou(rows: list[dict], methods: list[str], path: Path, title: str = "") -> None:
    """One line per method: cIoU (%) against the number of visual tokens (log axis)."""
    plot_budget_vs_metric(rows, methods, path, "ciou", "cIoU", title)


def plot_budget_vs_metric(
    rows: list[dict], methods: list[str], path: Path, field: str, label: str, title: str = ""
) -> None:
    """One line per method: the rows' `field` (a fraction, shown in %) against the number of visual tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for method in methods:
        points = sorted(
            (r["budget"], 100 * r[field]) for r in rows if r["method"] == method and r[field] is not None
        )
        if points:
            axis.plot(*zip(*points), marker="o", label=method)
    axis.set_xscale("log", base=2)
    budgets = sorted({r["budget"] for r in rows})
    axis.set_xticks(budgets, [str(b) for b in budgets])
    axis.set_xlabel("visual tokens kept")
    axis.set_ylabel(f"{label} (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, figure_png(figure))


def write_reports(directory: Path, records: list[dict], config: dict) -> dict:
    methods, budgets = config["methods"], config["budgets"]
    rows = aggregate(records, methods, budgets)
    payload = {"results": rows, "config": config}
    write_atomic(directory / "results.json", format_json(payload).encode())
    title = f"{config.get('dataset', '')} {config.get('split', '')} ({config['protocol']} protocol)".strip()
    write_atomic(
        directory / "results.md", (f"# {title}\n\n" + markdown_table(rows, methods, budgets)).encode()
    )
    plot_budget_vs_ciou(rows, methods, directory / "budget_vs_ciou.png", title)
    return payload
