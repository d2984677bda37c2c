"""The one summary line of `benchmarks/gpu_check.sh`, from the JSON files its steps wrote.

    python benchmarks/gpu_summary.py --bench OUT/glamm7b_cuda_bf16.json --sam OUT/sam_encoder_cuda_bf16.json \
        --status device-tests=passed --status bench=passed

Reads the `litelvlm bench` report (rows: method, budget, speedup_vs_full, ideal_speedup, realized_over_ideal) and
the `benchmarks/sam_encoder.py` report (rows: variant, median_s; `faster`: the faster of litelvlm's fused forward
and transformers' SDPA, and `default_sam_attention`'s choice for the device). A missing or unreadable file is named
in the line instead of stopping it: the line is printed whatever the steps did. Standard library only.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METHODS = ("litelvlm", "fastv")
# `benchmarks/sam_encoder.py`'s variant names of the two forwards `default_sam_attention` chooses between.
CHOICES = {"fused": "litelvlm fused", "sdpa": "transformers sdpa"}


def read(path: str | None) -> tuple[dict | None, str | None]:
    """(report, None) or (None, why it is missing)."""
    if not path:
        return None, "not run"
    try:
        return json.loads(Path(path).read_text()), None
    except FileNotFoundError:
        return None, "no result"
    except (OSError, ValueError) as error:
        return None, f"unreadable ({type(error).__name__})"


def bench_part(report: dict, budget: int) -> str:
    """'at 64 tokens litelvlm 2.31x (FLOP ideal 1.89x, realized/ideal 1.22), fastv ...; full 0.21 s'."""
    rows = report["runs"]
    budgets = sorted({row["budget"] for row in rows})
    if budget not in budgets:  # (a run with other budgets: its smallest)
        budget = budgets[0]
    parts = []
    for method in METHODS:
        row = next((r for r in rows if r["method"] == method and r["budget"] == budget), None)
        if row is None:
            parts.append(f"{method} not run")
            continue
        parts.append(
            f"{method} {row['speedup_vs_full']:.2f}x (FLOP ideal {row['ideal_speedup']:.2f}x, "
            f"realized/ideal {row['realized_over_ideal']:.2f})"
        )
    full = max(budgets)
    totals = [r["total_s"] for r in rows if r["budget"] == full and r["method"] == METHODS[0]]
    text = f"at {budget} tokens " + ", ".join(parts)
    if totals:
        text += f"; {full} tokens {totals[0]:.3g} s"
    return text


def sam_part(report: dict) -> str:
    """'SAM encoder sdpa 0.031 s vs fused 0.045 s: sdpa faster (1.45x), default on cuda sdpa (confirmed)'."""
    medians = {row["variant"]: row["median_s"] for row in report["rows"]}
    seconds = {choice: medians[variant] for choice, variant in CHOICES.items() if variant in medians}
    if len(seconds) < 2:
        return "SAM encoder: fused or sdpa row missing"
    faster = min(seconds, key=seconds.get)
    slower = max(seconds, key=seconds.get)
    device = report["config"]["device"]
    default = report.get("faster", {}).get("default_on_device")
    text = (
        f"SAM encoder {faster} {seconds[faster]:.3g} s vs {slower} {seconds[slower]:.3g} s: {faster} faster "
        f"({seconds[slower] / seconds[faster]:.2f}x)"
    )
    if default is None:
        return text
    if report["config"].get("scaled"):
        verdict = "scaled run, not a verdict"
    else:
        verdict = "confirmed" if default == faster else f"change it to {faster}"
    return text + f", default on {device} {default} ({verdict})"


def summary(bench_path: str | None, sam_path: str | None, statuses: list[str], budget: int = 64) -> str:
    bench, bench_missing = read(bench_path)
    sam, sam_missing = read(sam_path)
    head = "GPU check summary"
    if bench is not None:
        config = bench["config"]
        where = config["device"] + (f" {config['machine']['cuda']}" if config["machine"].get("cuda") else "")
        size = "scaled" if config.get("scaled") else "full size"
        head += f" ({where}, {config['dtype']}, {size}, SAM {config.get('sam_attention', '?')})"
    parts = []
    if statuses:
        failed = [s for s in statuses if s.endswith(("=failed", "=timed-out"))]
        parts.append(("FAILED " if failed else "") + ", ".join(s.replace("=", " ") for s in statuses))
    try:
        parts.append(bench_part(bench, budget) if bench is not None else f"bench: {bench_missing}")
    except (KeyError, TypeError, ValueError, IndexError) as error:
        parts.append(f"bench: unexpected report ({type(error).__name__}: {error})")
    try:
        parts.append(sam_part(sam) if sam is not None else f"SAM encoder: {sam_missing}")
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as error:
        parts.append(f"SAM encoder: unexpected report ({type(error).__name__}: {error})")
    return head + ": " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", help="the JSON report of `litelvlm bench`")
    parser.add_argument("--sam", help="the JSON report of benchmarks/sam_encoder.py")
    parser.add_argument("--status", action="append", default=[], metavar="STEP=STATUS",
                        help="a step's outcome, repeatable (passed, failed, timed-out, skipped)")  # fmt: skip
    parser.add_argument("--budget", type=int, default=64, help="the budget whose speed-ups are shown")
    args = parser.parse_args()
    print(summary(args.bench, args.sam, args.status, args.budget))


if __name__ == "__main__":
    main()
