"""Memory shedding: above M2FP_MEMORY_SHED_FRACTION of the memory limit, /readyz answers 503
and new parses are refused with 503 until usage drops again.

What is measured is the service, never the machine (a neighbour's process must not make it
shed):

- in a cgroup with a memory limit (a container, a systemd unit with `MemoryMax=`, a pod), the
  cgroup is the service's own: usage is its working set (usage minus inactive page cache, what
  the OOM killer looks at), the limit M2FP_MEMORY_LIMIT_MB when set, else the cgroup's;
- otherwise usage is the proportional set size (PSS: shared pages split between the processes
  sharing them) of the service's processes, the gunicorn master and all its descendants
  (`SERVICE_PID_ENV`, set by gunicorn.conf.py; this process and its children without it), and
  the limit M2FP_MEMORY_LIMIT_MB when set, else the machine's RAM.

Swap is disk too: `swap_warning` says when the service's memory can be swapped out (gunicorn's
first worker logs it once at start, gunicorn.conf.py).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SWAPS = Path("/proc/swaps")
PROC_CGROUP = Path("/proc/self/cgroup")
# The pid of the process whose tree is the service (the gunicorn master), for its workers.
SERVICE_PID_ENV = "M2FP_SERVICE_PID"
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


def _cgroup_dirs(root: Path, proc_cgroup: Path = PROC_CGROUP) -> list[tuple[int, Path]]:
    """(version, directory) candidates of this process's memory cgroup, own path first."""
    found: list[tuple[int, Path]] = []
    try:
        lines = proc_cgroup.read_text().splitlines()
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


def cgroup_memory(
    root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> MemoryReading | None:
    """This process's cgroup memory limit and working set, or None without a limit."""
    for version, directory in _cgroup_dirs(root, proc_cgroup):
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


def service_root_pid() -> int:
    """The root of the service's process tree: the gunicorn master when this process descends
    from it (a stale variable inherited by something else is ignored), else this process."""
    raw = os.environ.get(SERVICE_PID_ENV, "")
    if raw.isdigit():
        pid = int(raw)
        if pid == os.getpid() or pid in (p.pid for p in psutil.Process().parents()):
            return pid
    return os.getpid()


def service_memory(root_pid: int) -> int:
    """Bytes held by `root_pid` and its descendants: the sum of their PSS (RSS where PSS
    cannot be read). PSS counts a page shared by n processes as 1/n in each, so the sum is
    what the tree really holds; summed RSS would count shared libraries once per worker."""
    try:
        root = psutil.Process(root_pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        processes = [psutil.Process()]
    total = 0
    for process in processes:
        try:
            try:
                total += process.memory_full_info().pss
            except psutil.AccessDenied:
                total += process.memory_info().rss
        except psutil.Error:  # exited while we looked
            continue
    return total


def default_probe(
    limit_bytes: int | None = None,
    *,
    cgroup_root: Path = CGROUP_ROOT,
    proc_cgroup: Path = PROC_CGROUP,
    service_pid: int | None = None,
) -> Callable[[], MemoryReading]:
    """The service's memory: its cgroup when that has a limit, else its processes' PSS;
    measured against `limit_bytes` (M2FP_MEMORY_LIMIT_MB) when given."""

    def probe() -> MemoryReading:
        cgroup = cgroup_memory(cgroup_root, proc_cgroup)
        if cgroup is not None:
            return MemoryReading(cgroup.used, limit_bytes or cgroup.limit)
        used = service_memory(service_pid if service_pid is not None else service_root_pid())
        return MemoryReading(used, limit_bytes or psutil.virtual_memory().total)

    return probe


def swap_warning(
    proc_swaps: Path = PROC_SWAPS, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> str | None:
    """A warning when swap is active and this process's cgroup does not keep it out of swap
    (v2 `memory.swap.max` 0 here or above; v1 `memory.memsw.limit_in_bytes` equal to
    `memory.limit_in_bytes`), else None."""
    try:
        lines = proc_swaps.read_text().splitlines()[1:]
    except OSError:
        return None
    devices = [line.split()[0] for line in lines if line.strip()]
    if not devices or _swap_off_by_cgroup(cgroup_root, proc_cgroup):
        return None
    return (
        f"swap is active ({', '.join(devices)}) and this service's memory can be swapped out:"
        " uploaded images could be written to disk. Turn swap off for the service (systemd"
        " MemorySwapMax=0, compose memswap_limit equal to mem_limit) or encrypt the swap;"
        " docs/deployment.md, Operations"
    )


def _swap_off_by_cgroup(root: Path, proc_cgroup: Path) -> bool:
    for version, directory in _cgroup_dirs(root, proc_cgroup):
        if version == 2:
            # A limit of 0 on any cgroup from ours up to the root keeps us out of swap.
            for level in (directory, *directory.parents):
                if _read_int(level / "memory.swap.max") == 0:
                    return True
                if level == root:
                    break
        else:
            memsw = _read_int(directory / "memory.memsw.limit_in_bytes")
            memory = _read_int(directory / "memory.limit_in_bytes")
            if memsw is not None and memory is not None and memsw <= memory < _UNLIMITED:
                return True
    return False


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


__all__ = [
    "SERVICE_PID_ENV",
    "MemoryGuard",
    "MemoryReading",
    "cgroup_memory",
    "default_probe",
    "service_memory",
    "service_root_pid",
    "swap_warning",
]
