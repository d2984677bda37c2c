"""Peak and activation memory of a piece of work, measured honestly on CUDA and on CPU.

CUDA: the caching allocator's statistics (`max_memory_allocated` after `reset_peak_memory_stats`); the
activation memory is the peak minus what was allocated before (weights and cached image work).
CPU: resident set size (RSS) sampled every `interval` seconds by a thread, after `malloc_trim` has returned freed
heap pages to the system; activation memory is the peak RSS minus the RSS before. Short-lived peaks between two
samples can be missed, and allocator caching can hide reuse: CPU numbers are an estimate, CUDA numbers exact.
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * _PAGE
    except OSError:
        return 0


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc), so RSS reflects live memory."""
    with suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc keep freed memory in the heap for the next tensor instead of returning it to the OS.

    By default, every large tensor of a CPU forward is a fresh `mmap` (or heap memory just trimmed back to the
    OS), so the kernel faults in and zeroes its pages again: ~10 % of SAM ViT-H's encoder time on a 2-core CPU
    (9.1 s -> 8.1 s). Here allocations up to 32 MiB (glibc's maximum) come from the heap and the heap is never
    trimmed automatically, much as under jemalloc or tcmalloc (which PyTorch's CPU performance guide suggests).
    `release_free_memory()` still trims on demand. Process-wide: the CLI calls this, the library does not.
    Returns False where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((_M_MMAP_THRESHOLD, 32 * 2**20), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 * 2**20))
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in settings)


def memory_method(device: torch.device | str, interval: float = 0.002) -> str:
    """How `measure_memory` measures on this device (for reports)."""
    if torch.device(device).type == "cuda":
        return "CUDA caching allocator: max_memory_allocated minus memory_allocated before"
    return f"process RSS sampled every {interval * 1000:.0f} ms after malloc_trim, minus RSS before"


@dataclass
class MemoryUsage:
    peak_bytes: int = 0
    baseline_bytes: int = 0
    method: str = ""

    @property
    def activation_bytes(self) -> int:
        return max(0, self.peak_bytes - self.baseline_bytes)


@contextmanager
def measure_memory(device: torch.device | str, interval: float = 0.002):
    """Yields a MemoryUsage filled in when the block ends."""
    device = torch.device(device)
    usage = MemoryUsage()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        usage.baseline_bytes = torch.cuda.memory_allocated(device)
        usage.method = memory_method(device)
        try:
            yield usage
        finally:
            torch.cuda.synchronize(device)
            usage.peak_bytes = torch.cuda.max_memory_allocated(device)
        return
    release_free_memory()
    usage.baseline_bytes = usage.peak_bytes = rss_bytes()
    usage.method = memory_method(device, interval)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            usage.peak_bytes = max(usage.peak_bytes, rss_bytes())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        usage.peak_bytes = max(usage.peak_bytes, rss_bytes())


class ModuleMemoryProbe:
    """Peak activation memory inside one module's forward (e.g. the LLM), over every call while attached:
    a forward pre-hook starts a `measure_memory` window and a forward hook closes it. For measurement only."""

    def __init__(self, module: torch.nn.Module, device: torch.device | str) -> None:
        self.module, self.device = module, device
        self.activation_bytes = 0
        self._window = None
        self._usage = None
        self._hooks = []

    def __enter__(self) -> ModuleMemoryProbe:
        self._hooks = [
            self.module.register_forward_pre_hook(lambda *args: self._start()),
            self.module.register_forward_hook(lambda *args: self._stop()),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for hook in self._hooks:
            hook.remove()
        self._stop()

    def _start(self) -> None:
        self._window = measure_memory(self.device)
        self._usage = self._window.__enter__()

    def _stop(self) -> None:
        if self._window is not None:
            self._window.__exit__(None, None, None)
            self.activation_bytes = max(self.activation_bytes, self._usage.activation_bytes)
            self._window = None
