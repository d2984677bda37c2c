"""benchmarks/gpu_check.sh: its dry run puts every step through on the CPU at tiny sizes (the real run needs a GPU)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
STEPS = ("environment", "device-tests", "bench", "sam-encoder")


def run_script(*args, cwd, **env):
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHON": sys.executable, **env},
        timeout=300,
    )


@pytest.mark.slow
def test_dry_run_runs_every_step_writes_its_files_and_prints_the_summary(tmp_path, tiny_glamm_dir):
    out = tmp_path / "out"
    # Step 1 on one file's device tests (the suite runs all of them anyway), step 4 (more tests: pytest again, a
    # collection) left out and the session's tiny GLaMM keep it short.
    result = run_script(
        "--dry-run",
        "--out",
        str(out),
        cwd=tmp_path,
        GPU_CHECK_TESTS="tests/test_selection_baselines.py",
        GPU_CHECK_MORE_TESTS="",
        GPU_CHECK_TINY_MODEL=str(tiny_glamm_dir),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("GPU check summary (cpu, bfloat16, scaled, SAM fused): "), summary
    assert ", ".join(f"{step} passed" for step in STEPS) + ", more-tests skipped; " in summary
    assert "at 64 tokens litelvlm " in summary and "), fastv " in summary and "realized/ideal" in summary
    assert "SAM encoder " in summary and "default on cpu fused (scaled run, not a verdict)" in summary
    expected = {
        "dry_run_glamm7b_cpu_bf16.json",
        "dry_run_glamm7b_cpu_bf16.md",
        "dry_run_glamm7b_cpu_bf16.png",
        "dry_run_sam_encoder_cpu_bf16.json",
        "dry_run_sam_encoder_cpu_bf16.md",
        "dry_run_gpu_check_cpu.log",
    }
    assert {path.name for path in out.iterdir()} == expected
    bench = json.loads((out / "dry_run_glamm7b_cpu_bf16.json").read_text())
    assert {(row["method"], row["budget"]) for row in bench["runs"]} == {
        (method, budget) for method in ("litelvlm", "fastv") for budget in (576, 64)
    }
    assert bench["config"]["device"] == "cpu" and bench["config"]["sam_attention"] == "fused"
    sam = json.loads((out / "dry_run_sam_encoder_cpu_bf16.json").read_text())
    assert sam["config"]["scaled"] and sam["faster"]["default_on_device"] == "fused"
    assert len(sam["rows"]) == 4
    log = (out / "dry_run_gpu_check_cpu.log").read_text()
    assert summary in log and "== device-tests: passed" in log


def test_the_test_files_the_gpu_run_names_exist():
    """(The dry run above runs step 1 on one file and skips step 4; the GPU run runs these.)"""
    text = SCRIPT.read_text()
    listed = re.search(r"MORE_TESTS=\$\{GPU_CHECK_MORE_TESTS-([^}]*)\}", text).group(1).split()
    assert len(listed) == 8 and all((ROOT / path).is_file() for path in listed), listed
    assert "TESTS=${GPU_CHECK_TESTS:-tests}" in text


def test_bad_arguments_are_refused_before_any_work(tmp_path):
    result = run_script("--dry-run", "--bogus", cwd=tmp_path)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr
    assert not list(tmp_path.iterdir())
    result = run_script("--help", cwd=tmp_path)
    assert result.returncode == 0 and "--dry-run" in result.stdout and "Usage" in result.stdout
