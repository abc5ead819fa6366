"""Memory shedding: above M2FP_MEMORY_SHED_FRACTION of the memory limit, /readyz answers 503
and new parses are refused with 503 until usage drops again.

The limit is M2FP_MEMORY_LIMIT_MB when set, else the memory limit of this process's cgroup
(v2 `memory.max`, v1 `memory.limit_in_bytes`), else the machine's RAM. Usage is what the OOM
killer looks at: the cgroup's working set (usage minus inactive page cache) when the cgroup has
a limit, else the machine's used memory (total minus available, from psutil).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a number near 2**63
SAMPLE_SECONDS = 0.5  # reading /proc or cgroup files on every request is wasted work


@dataclass(frozen=True)
class MemoryReading:
    used: int
    limit: int

    @property
    def ratio(self) -> float:
        return self.used / self.limit if self.limit > 0 else 0.0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat(path: Path, field: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == field:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_dirs(root: Path) -> list[tuple[int, Path]]:
    """(version, directory) candidates of this process's memory cgroup, own path first."""
    found: list[tuple[int, Path]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            found += [(2, root / rel), (2, root)]
        elif "memory" in controllers.split(","):
            found += [(1, root / "memory" / rel), (1, root / "memory")]
    return found


def cgroup_memory(root: Path = CGROUP_ROOT) -> MemoryReading | None:
    """This process's cgroup memory limit and working set, or None without a limit."""
    for version, directory in _cgroup_dirs(root):
        if version == 2:
            limit = _read_int(directory / "memory.max")  # "max" → None
            usage = _read_int(directory / "memory.current")
            inactive = _stat(directory / "memory.stat", "inactive_file")
        else:
            limit = _read_int(directory / "memory.limit_in_bytes")
            usage = _read_int(directory / "memory.usage_in_bytes")
            inactive = _stat(directory / "memory.stat", "total_inactive_file")
        if limit is not None and usage is not None and 0 < limit < _UNLIMITED:
            return MemoryReading(max(0, usage - inactive), limit)
    return None


def system_memory() -> MemoryReading:
    vm = psutil.virtual_memory()
    return MemoryReading(vm.total - vm.available, vm.total)


def default_probe(limit_bytes: int | None = None) -> Callable[[], MemoryReading]:
    def probe() -> MemoryReading:
        reading = cgroup_memory() or system_memory()
        if limit_bytes is not None:
            return MemoryReading(reading.used, limit_bytes)
        return reading

    return probe


class MemoryGuard:
    """`shedding` is True while usage is above `fraction` of the limit (sampled twice a second)."""

    def __init__(self, fraction: float, probe: Callable[[], MemoryReading] | None = None) -> None:
        self.fraction = fraction
        self.probe = probe or default_probe()
        self._lock = threading.Lock()
        self._reading: MemoryReading | None = None
        self._at = 0.0

    def reading(self) -> MemoryReading:
        with self._lock:
            now = time.monotonic()
            if self._reading is None or now - self._at >= SAMPLE_SECONDS:
                self._reading, self._at = self.probe(), now
            return self._reading

    def refresh(self) -> None:
        """Forget the cached sample (tests, and after the probe changed)."""
        with self._lock:
            self._reading = None

    @property
    def shedding(self) -> bool:
        return self.reading().ratio > self.fraction


__all__ = ["MemoryGuard", "MemoryReading", "cgroup_memory", "default_probe", "system_memory"]
