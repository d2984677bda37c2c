"""Published numbers shipped with the package: the LiteLVLM paper's main table (cIoU, host GLaMM).

The data file `published/litelvlm_paper_glamm.json` names its source, its host and its metric; each row is one
(budget, method) of the paper with its cIoU (%) on the 8 RefCOCO/+/g splits. Method names are litelvlm's
registry names (`paper_name` keeps the paper's), and method "full" is the model without pruning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

PAPER_FILE = "litelvlm_paper_glamm.json"
FULL = "full"  # the method name of the unpruned row


@dataclass(frozen=True)
class PublishedTable:
    """A published table: `rows[(method, budget)]` -> {split key: cIoU (%)}, and where it comes from."""

    source: str
    host: str
    model: str
    metric: str
    splits: tuple[str, ...]
    rows: dict[tuple[str, int], dict[str, float]]
    paper_names: dict[str, str]  # registry name -> the paper's name

    def full(self) -> tuple[int, dict[str, float]]:
        """(budget, cIoU per split) of the unpruned row."""
        for (method, budget), values in self.rows.items():
            if method == FULL:
                return budget, values
        raise KeyError(FULL)

    def get(self, method: str, budget: int) -> dict[str, float] | None:
        return self.rows.get((method, budget))


def load_paper_table() -> PublishedTable:
    """The LiteLVLM paper's main table as shipped in the package."""
    text = resources.files(__package__).joinpath("published").joinpath(PAPER_FILE).read_text(encoding="utf-8")
    return parse_table(json.loads(text))


def parse_table(data: dict) -> PublishedTable:
    rows = {(row["method"], int(row["budget"])): dict(row["ciou"]) for row in data["rows"]}
    names = {row["method"]: row["paper_name"] for row in data["rows"]}
    return PublishedTable(
        source=data["source"],
        host=data["host"],
        model=data["model"],
        metric=data["metric"],
        splits=tuple(data["splits"]),
        rows=rows,
        paper_names=names,
    )
