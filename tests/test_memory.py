"""Process memory settings (litelvlm.memory.keep_freed_memory_for_reuse), checked in fresh interpreters."""

import json
import subprocess
import sys

import pytest

CYCLES = """
import json, resource, sys, torch
from litelvlm.memory import keep_freed_memory_for_reuse
applied = keep_freed_memory_for_reuse() if sys.argv[1] == "keep" else None
def page_faults_of_one_cycle():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(6 * 2**20) for _ in range(4)]  # 4 x 24 MiB, freed together
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": [page_faults_of_one_cycle() for _ in range(4)]}))
"""


def _cycles(mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def test_freed_tensors_are_reused_without_new_page_faults():
    kept = _cycles("keep")
    if not kept["applied"]:
        pytest.skip("not glibc")
    default = _cycles("default")
    pages = 4 * 24 * 2**20 // 4096
    assert default["faults"][-1] > pages // 2  # glibc's default hands the memory back and faults it in again
    assert kept["faults"][-1] < pages // 100
