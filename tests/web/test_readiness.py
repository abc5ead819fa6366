"""/healthz, /readyz and the 503s: model loading, model failures, a full queue, memory
shedding, and unexpected errors (500 with the request id only)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from m2fp.engine import InferenceEngine
from tests.support.api import parse
from tests.support.model_factory import make_tiny_model
from web.overload import MemoryReading, default_probe, swap_warning


class SlowStart(InferenceEngine):
    """The real engine, whose start waits for the test to let it go."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.go = threading.Event()

    def start(self):
        self.go.wait(30)
        super().start()


def test_not_ready_until_the_model_is_loaded(make_app):
    engine = SlowStart(model=make_tiny_model(), warmup=False)
    app = make_app(engine=engine, wait=False)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    for r in (client.get("/readyz"), parse(client)):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "not_ready"
        assert int(r.headers["Retry-After"]) > 0
    engine.go.set()
    assert app.extensions["m2fp_service"].runtime.wait(30)
    assert client.get("/readyz").get_json() == {"status": "ready"}
    assert parse(client).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"model_dir": "missing-model-dir"}, "missing-model-dir"),
        ({"weights_sha256": "0" * 64}, "ModelIntegrityError"),
    ],
    ids=["missing-dir", "wrong-pinned-hash"],
)
def test_model_failure_is_503_with_the_reason_in_the_operator_log(
    make_app, tiny_model_dir, tmp_path, caplog, capfd, overrides, reason
):
    if overrides.get("model_dir"):
        overrides = {"model_dir": tmp_path / overrides["model_dir"]}
    else:
        overrides = {"model_dir": tiny_model_dir, **overrides}
    with caplog.at_level(logging.INFO, logger="m2fp"):
        app = make_app(**overrides)
    client = app.test_client()
    assert app.extensions["m2fp_service"].runtime.state == "failed"
    assert client.get("/healthz").status_code == 200
    ready, parsed = client.get("/readyz"), parse(client)
    for r in (ready, parsed):
        assert r.status_code == 503
        assert r.get_json()["error"]["code"] == "not_ready"
        text = r.get_data(as_text=True)
        assert reason not in text and str(tmp_path) not in text and "sha256" not in text
    _, err = capfd.readouterr()
    assert reason in err
    assert "model failed to load" in err


class BlockingForward:
    """Makes a model's forward wait until released (and say when it started)."""

    def __init__(self, model):
        self.entered = threading.Event()
        self.release = threading.Event()
        self._forward = model.forward
        model.forward = self

    def __call__(self, *args, **kwargs):
        self.entered.set()
        self.release.wait(30)
        return self._forward(*args, **kwargs)


def test_full_queue_is_503_overloaded(make_app):
    app = make_app(
        model=make_tiny_model(),
        batch_max=1,
        queue_max=1,
        batch_wait_ms=0,
        rate_limit="100 per minute",
    )
    engine = app.extensions["m2fp"]
    gate = BlockingForward(engine.parser.model)  # the copy the engine serves
    results: dict[str, int] = {}

    def send(name):
        results[name] = parse(app.test_client()).status_code

    first = threading.Thread(target=send, args=("first",))
    first.start()
    assert gate.entered.wait(10)  # the batch thread is busy with the first image
    second = threading.Thread(target=send, args=("second",))
    second.start()
    deadline = time.monotonic() + 10
    while engine.queue_depth < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.queue_depth == 1  # the second waits in the queue
    r = parse(app.test_client())
    assert r.status_code == 503
    assert r.get_json()["error"]["code"] == "overloaded"
    assert int(r.headers["Retry-After"]) >= 1
    gate.release.set()
    first.join(30)
    second.join(30)
    assert results == {"first": 200, "second": 200}


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


# -- the instance's readiness: workers ready / total, and a reloading worker kept off the port ----


def _gauge(app, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = app.extensions["m2fp_service"].metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"{name} is not exported")


def test_workers_ready_and_total_are_metrics(make_app):
    engine = SlowStart(model=make_tiny_model(), warmup=False)
    app = make_app(engine=engine, wait=False)
    assert _gauge(app, "m2fp_workers") == 1
    assert _gauge(app, "m2fp_workers_ready") == 0  # loading
    engine.go.set()
    assert app.extensions["m2fp_service"].runtime.wait(30)
    assert _gauge(app, "m2fp_workers_ready") == 1
    app.extensions["m2fp_service"].memory.probe = lambda: MemoryReading(used=99, limit=100)
    app.extensions["m2fp_service"].memory.refresh()
    assert _gauge(app, "m2fp_workers_ready") == 0  # shedding: its /readyz says 503


def test_a_loading_worker_stays_off_the_port_while_another_answers(make_app):
    """gunicorn's post_worker_init: a worker whose model is loading does not accept
    connections while another worker of the instance does (its probes would answer 503 on the
    shared port); it tells the master it is alive meanwhile. Alone, it accepts at once."""
    from web.ops import hold_until_ready

    engine = SlowStart(model=make_tiny_model(), warmup=False)
    app = make_app(engine=engine, wait=False)
    beats = []
    assert hold_until_ready(app, notify=lambda: None, alive=lambda: True, others=lambda: 0) == (
        "loading"
    )
    done = []
    holder = threading.Thread(
        target=lambda: done.append(
            hold_until_ready(
                app, notify=lambda: beats.append(1), alive=lambda: True, others=lambda: 1
            )
        )
    )
    holder.start()
    time.sleep(1.0)
    assert done == [] and beats  # held, and alive for the master
    engine.go.set()
    holder.join(30)
    assert done == ["ready"]
    # A worker told to stop while it waits stops waiting.
    other = SlowStart(model=make_tiny_model(), warmup=False)
    stopping = make_app(engine=other, wait=False)
    assert hold_until_ready(
        stopping, notify=lambda: None, alive=lambda: False, others=lambda: 1
    ) == ("loading")
    other.go.set()
