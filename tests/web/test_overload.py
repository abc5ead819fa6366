"""web/overload.py: memory shedding (/readyz and parses 503 above the threshold), measured
on the service and its cgroup, never the machine; the swap warning."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.support.api import parse
from web.overload import MemoryReading, default_probe, swap_warning


def test_memory_shedding(make_app):
    app = make_app(memory_limit_mb=1, rate_limit="100 per minute")
    client = app.test_client()
    for r in (client.get("/readyz"), parse(client)):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    assert client.get("/healthz").status_code == 200
    # Usage drops (here: the limit grows): parses are accepted again.
    memory = app.extensions["m2fp_service"].memory
    memory.probe = default_probe(1 << 50)
    memory.refresh()
    assert client.get("/readyz").status_code == 200
    assert parse(client).status_code == 200


def test_memory_guard_threshold():
    from web.overload import MemoryGuard

    reading = MemoryReading(used=90, limit=100)
    guard = MemoryGuard(0.9, probe=lambda: reading)
    assert not guard.shedding  # at the threshold, not above
    guard = MemoryGuard(0.89, probe=lambda: reading)
    assert guard.shedding


NEIGHBOUR = """
import sys, time
block = bytearray(256 * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
print("ready", flush=True)
time.sleep(60)
"""


def _neighbour() -> tuple[subprocess.Popen, int]:
    """A process that is not the service's: started through a shell that exits at once, so
    it belongs to init, not to this process. Returns the shell and the neighbour's pid."""
    shell = subprocess.Popen(
        ["sh", "-c", f'{sys.executable} -c "$0" & echo $!', NEIGHBOUR],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    pid = int(shell.stdout.readline())
    shell.wait(10)
    deadline = time.monotonic() + 30
    while psutil.Process(pid).memory_info().rss < 200 * 1024 * 1024:
        assert time.monotonic() < deadline, "the neighbour did not take its memory"
        time.sleep(0.05)
    return shell, pid


def test_memory_shedding_measures_the_service_not_the_machine(make_app, tmp_path):
    """Without a cgroup limit (an empty cgroup tree here), usage is the service's own
    processes, not the machine's: a neighbour taking memory does not make the service shed."""
    own = psutil.Process().memory_full_info().pss
    limit_mb = (own + 200 * 1024 * 1024) // (1024 * 1024)
    app = make_app(memory_limit_mb=limit_mb, rate_limit="100 per minute")
    memory = app.extensions["m2fp_service"].memory
    memory.probe = default_probe(limit_mb * 1024 * 1024, cgroup_root=tmp_path)
    memory.refresh()
    before = memory.reading()
    assert before.limit == limit_mb * 1024 * 1024
    assert before.used < limit_mb * 1024 * 1024 * 0.9  # the machine uses far more
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    _, pid = _neighbour()
    try:
        memory.refresh()
        after = memory.reading()
        assert after.used - before.used < 100 * 1024 * 1024  # the neighbour's 256 MB: not ours
        assert client.get("/readyz").status_code == 200
        assert parse(client).status_code == 200
    finally:
        os.kill(pid, signal.SIGKILL)


def test_service_memory_counts_the_children(tmp_path):
    """Under gunicorn the service is the master and its workers: a child's memory counts."""
    probe = default_probe(1 << 40, cgroup_root=tmp_path, service_pid=os.getpid())
    before = probe().used
    child = subprocess.Popen([sys.executable, "-c", NEIGHBOUR], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        assert probe().used - before > 200 * 1024 * 1024
    finally:
        child.kill()
        child.wait()


def test_cgroup_limit_is_the_service_own(tmp_path):
    """In a cgroup with a limit (a container, a systemd unit with MemoryMax) the cgroup's
    working set is the usage, measured against M2FP_MEMORY_LIMIT_MB when that is set."""
    proc_cgroup = tmp_path / "cgroup-of-self"
    proc_cgroup.write_text("0::/system.slice/m2fp.service\n")
    unit = tmp_path / "system.slice" / "m2fp.service"
    unit.mkdir(parents=True)
    (unit / "memory.max").write_text("1073741824\n")
    (unit / "memory.current").write_text("536870912\n")
    (unit / "memory.stat").write_text("anon 1\ninactive_file 134217728\n")
    for limit, expected in ((None, 1 << 30), (2 << 30, 2 << 30)):
        probe = default_probe(limit, cgroup_root=tmp_path, proc_cgroup=proc_cgroup)
        assert probe() == MemoryReading(used=402653184, limit=expected)


SWAPS = "Filename\tType\tSize\tUsed\tPriority\n/dev/sda2\tpartition\t8388604\t0\t-2\n"


V2 = "0::/system.slice/m2fp.service\n"
V1 = "4:memory:/docker/abc\n0::/\n"


@pytest.mark.parametrize(
    ("swaps", "proc_cgroup", "cgroup_files", "warned"),
    [
        (SWAPS, V2, {}, True),
        (SWAPS.splitlines()[0] + "\n", V2, {}, False),  # no swap device
        # systemd MemorySwapMax=0 on the unit, or on a slice above it (cgroup v2)
        (SWAPS, V2, {"system.slice/m2fp.service/memory.swap.max": "0\n"}, False),
        (SWAPS, V2, {"system.slice/memory.swap.max": "0\n"}, False),
        (SWAPS, V2, {"system.slice/m2fp.service/memory.swap.max": "max\n"}, True),
        # cgroup v1: memory+swap limited to the memory limit (compose memswap_limit = mem_limit)
        (
            SWAPS,
            V1,
            {
                "memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
                "memory/docker/abc/memory.memsw.limit_in_bytes": "1073741824\n",
            },
            False,
        ),
        (SWAPS, V1, {"memory/docker/abc/memory.limit_in_bytes": "1073741824\n"}, True),
    ],
    ids=["swap", "no-swap", "unit-swap-0", "slice-swap-0", "swap-max", "v1-memsw", "v1-no-memsw"],
)
def test_swap_warning(tmp_path, swaps, proc_cgroup, cgroup_files, warned):
    (tmp_path / "swaps").write_text(swaps)
    (tmp_path / "self-cgroup").write_text(proc_cgroup)
    root = tmp_path / "cgroup"
    for name, text in cgroup_files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    message = swap_warning(tmp_path / "swaps", root, tmp_path / "self-cgroup")
    assert (message is not None) == warned
    if warned:
        assert "/dev/sda2" in message and "MemorySwapMax=0" in message
