"""The paper table of a preset run: our cIoU next to the published numbers, in the paper's layout, and its plot.

Rows: the full-token row, then budget x method in the paper's order; columns: the 8 splits, their average and
the average relative to the full row's. Each cell holds ours, published and the difference (percentage points).
Written as paper_table.md, paper_table.json (cIoU in percent, as the paper prints it) and
paper_budget_vs_ciou.png, all computed from the sub-runs' results alone, so `litelvlm report` rebuilds them
byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..io import figure_png, write_atomic
from .paper import split_title
from .published import FULL, PublishedTable, load_paper_table

TABLE_MD = "paper_table.md"
TABLE_JSON = "paper_table.json"
PLOT = "paper_budget_vs_ciou.png"
AVERAGE = "average"
# The run settings the table names next to our numbers.
OUR_SETTINGS = ("model", "protocol", "seed", "limit", "dtype", "text_source", "options")


def build_table(record: dict, payloads: dict[str, dict], published: PublishedTable) -> dict:
    """The table as a JSON-ready dict, from preset.json's `record` and each sub-run's results payload."""
    runs, methods, budgets = record["runs"], record["methods"], record["budgets"]
    full_budget = budgets[0]
    by_run = {key: {(r["method"], r["budget"]): r for r in payloads[key]["results"]} for key in runs}

    def ours(method: str, budget: int) -> dict:
        cells = {}
        for key in runs:
            row = by_run[key].get((method, budget))
            cells[key] = None if row is None or row["ciou"] is None else 100 * row["ciou"]
        return cells

    published_full_budget, published_full = published.full()
    rows = [
        _row(FULL, f"full ({full_budget})", full_budget, ours(methods[0], full_budget), published_full, runs)
    ]
    for budget in budgets[1:]:
        for method in methods:
            name = published.paper_names.get(method, method)
            rows.append(_row(method, name, budget, ours(method, budget), published.get(method, budget), runs))
    full_row = rows[0]
    for row in rows:
        row["relative_to_full"] = _compare(
            _ratio(row["ours"][AVERAGE], full_row["ours"][AVERAGE]),
            _ratio(row["published"][AVERAGE], full_row["published"][AVERAGE]),
        )
    counts = {key: by_run[key].get((methods[0], full_budget), {}).get("count", 0) for key in runs}
    return {
        "title": "LiteLVLM paper table: ours vs published",
        "metric": published.metric,
        "published": {
            "source": published.source,
            "host": published.host,
            "model": published.model,
            "full_budget": published_full_budget,
        },
        "ours": {name: record.get(name) for name in OUR_SETTINGS},
        "splits": runs,
        "images": {key: payloads[key]["config"].get("num_images") for key in runs},
        "expressions": counts,
        "rows": rows,
    }


def _row(method: str, name: str, budget: int, ours: dict, published: dict | None, runs: list[str]) -> dict:
    published = {key: (published or {}).get(key) for key in runs}
    ours = {**ours, AVERAGE: _mean(ours.values())}
    published = {**published, AVERAGE: _mean(published.values())}
    difference = {key: _difference(ours[key], published[key]) for key in ours}
    return {
        "budget": budget,
        "method": method,
        "name": name,
        "ours": ours,
        "published": published,
        "difference": difference,
    }


def _mean(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else sum(values) / len(values)


def _ratio(value: float | None, full: float | None) -> float | None:
    return None if value is None or not full else 100 * value / full


def _difference(ours: float | None, published: float | None) -> float | None:
    return None if ours is None or published is None else ours - published


def _compare(ours: float | None, published: float | None) -> dict:
    return {"ours": ours, "published": published, "difference": _difference(ours, published)}


def format_table_json(table: dict) -> str:
    """One top-level key per line and one row per line (as the shipped published data)."""
    lines = []
    for key, value in table.items():
        if key == "rows":
            inner = ",\n".join(f"    {json.dumps(row)}" for row in value)
            lines.append(f'  "rows": [\n{inner}\n  ]')
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _cell(ours: float | None, published: float | None, difference: float | None) -> str:
    """'ours / published (difference)', one decimal as the paper prints; — where a number is missing."""
    text = f"{_number(ours)} / {_number(published)}"
    return text if difference is None else f"{text} ({difference:+.1f})"


def markdown(table: dict) -> str:
    runs, ours = table["splits"], table["ours"]
    published = table["published"]
    images, expressions = sum(table["images"].values()), sum(table["expressions"].values())
    limit = "" if ours["limit"] is None else f" (--limit {ours['limit']} images per split)"
    lines = [
        f"# {table['title']}, {table['metric']}",
        "",
        "Each cell: ours / published (ours − published, percentage points). "
        "average: the mean of the 8 splits; relative to full: a row's average over the full row's (%).",
        "",
        f"Ours: `{ours['model']}`, {ours['protocol']} protocol, seed {ours['seed']}, {ours['dtype']}; "
        f"{images} images, {expressions} expressions over {len(runs)} splits{limit}.",
        f"Published: {published['source']} (host {published['host']}, `{published['model']}`, "
        f"full = {published['full_budget']} tokens).",
        "",
        "| budget | method | "
        + " | ".join(split_title(key) for key in runs)
        + " | average | relative to full |",
        "|---|---|" + "---|" * (len(runs) + 2),
    ]
    for row in table["rows"]:
        cells = [_cell(row["ours"][k], row["published"][k], row["difference"][k]) for k in [*runs, AVERAGE]]
        relative = row["relative_to_full"]
        cells.append(_cell(relative["ours"], relative["published"], relative["difference"]))
        lines.append(f"| {row['budget']} | {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: dict, path: Path) -> None:
    """Average cIoU against the budget, one colour per method: ours solid, published dashed (log axis)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = table["rows"][0]
    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = list(dict.fromkeys(row["method"] for row in table["rows"][1:]))
    for number, method in enumerate(methods):
        rows = [row for row in table["rows"][1:] if row["method"] == method]
        colour = f"C{number % 10}"
        for source, style, full_budget in (
            ("ours", "-", full["budget"]),
            ("published", "--", table["published"]["full_budget"]),
        ):
            points = [(full_budget, full[source][AVERAGE])] + [
                (r["budget"], r[source][AVERAGE]) for r in rows
            ]
            points = sorted((budget, value) for budget, value in points if value is not None)
            if len(points) > 1:
                label = rows[0]["name"] if source == "ours" else None
                axis.plot(*zip(*points), style, color=colour, marker="o", markersize=3, label=label)
    axis.set_xscale("log", base=2)
    budgets = sorted({row["budget"] for row in table["rows"]} | {table["published"]["full_budget"]})
    axis.set_xticks(budgets, [str(b) for b in budgets])
    axis.set_xlabel("visual tokens kept")
    axis.set_ylabel(f"average {table['metric']} over {len(table['splits'])} splits")
    axis.set_title("ours (solid) vs published (dashed)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    write_atomic(path, figure_png(figure))


def write_paper_reports(directory: Path, record: dict, payloads: dict[str, dict]) -> dict:
    """Write paper_table.md, paper_table.json and paper_budget_vs_ciou.png into a preset run; returns the
    table."""
    table = build_table(record, payloads, load_paper_table())
    write_atomic(directory / TABLE_JSON, format_table_json(table).encode())
    write_atomic(directory / TABLE_MD, markdown(table).encode())
    plot(table, directory / PLOT)
    return table
