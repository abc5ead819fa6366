"""The service behind a real socket: gunicorn running `app:create_app()` on 127.0.0.1.

The Flask test client spools multipart bodies over 500 KB to a temporary file itself, so
"nothing on disk" can only be shown over a socket:

- inotify watches every place the server could write while uploads up to the byte cap go
  through (multipart with Content-Length, chunked raw bodies, JSON base64). The server runs
  in a mount namespace (bubblewrap) whose /tmp, /var/tmp, /dev/shm and $HOME are directories
  only it uses, so every event there is the server's: other processes on this shared machine
  write to the real /tmp all the time and inotify cannot tell who wrote.
- the same uploads under a read-only root (only /dev/shm writable, a tmpfs) all succeed: any
  write anywhere would have failed the request.
- with a real redis-server and 2 workers the rate limit holds in total; with memory:// each
  worker counts for itself (the trap this guards against).
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import images
from tests.support.fswatch import TreeWatch, unexpected
from tests.support.paths import REPO
from tests.support.servers import Gunicorn, RedisServer
from web.overload import SAMPLE_SECONDS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CAP = 10 * 1024 * 1024  # the default M2FP_MAX_UPLOAD_MB
PARSE = "/api/v1/parse"
BWRAP = shutil.which("bwrap")


def chunked(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


def uploads(url: str, canary: str) -> list[tuple[str, int, requests.Response]]:
    """Every upload form up to the cap, and the rejections; (what, expected status, response)."""
    full = images.padded_png(CAP, canary=canary)
    multipart_file = images.padded_png(CAP - 4096, canary=canary)
    json_file = images.padded_png(CAP - 1024, canary=canary)
    name = f"{canary}-me.png"
    sent = []

    def post(what, expected, **kwargs):
        sent.append((what, expected, requests.post(url + PARSE, timeout=120, **kwargs)))

    post(
        "multipart, Content-Length",
        200,
        params={"output": "json"},
        files={"image": (name, multipart_file, "image/png")},
    )
    post(
        "multipart 600 KB",
        200,
        files={"file": (name, images.padded_png(600_000), "image/png")},
        headers={"Accept": "image/png"},
    )
    post("raw, chunked", 200, data=chunked(full), headers={"Content-Type": "image/png"})
    post(
        "raw, Content-Length",
        200,
        data=full,
        headers={"Content-Type": "image/png"},
        params={"output": "overlay", "format": "webp"},
    )
    post("JSON base64", 200, json={"image": base64.b64encode(json_file).decode()})
    post(
        "cutout",
        200,
        data=images.jpeg(),
        params={"output": "cutout", "classes": "1,2,5"},
        headers={"Content-Type": "image/jpeg"},
    )
    post(
        "raw, chunked, one byte over the cap",
        413,
        data=chunked(images.padded_png(CAP + 1)),
        headers={"Content-Type": "image/png"},
    )
    post("pixel bomb", 413, data=images.png_bomb(), headers={"Content-Type": "image/png"})
    post(
        "truncated", 422, files={"image": (f"{canary}.jpg", images.truncated_jpeg(), "image/jpeg")}
    )
    post("text as png", 415, files={"image": (name, images.TEXT, "image/png")})
    return sent


def check(sent) -> None:
    for what, expected, response in sent:
        assert response.status_code == expected, (what, response.text[:300])
        assert response.headers["Cache-Control"] == "no-store", what


def test_uploads_write_nothing_anywhere(namespace, tiny_model_dir):
    wrapper, dirs = namespace({"/tmp/model": tiny_model_dir})
    env = {
        "M2FP_MODEL_DIR": "/tmp/model",
        "M2FP_RATE_LIMIT": "1000 per minute",
        "M2FP_BAN_AFTER": "1000",
        "HOME": "/tmp/home",
        "TMPDIR": "/tmp",
    }
    server = Gunicorn(env, wrapper=wrapper)
    try:
        # Warm-up: every code path once, so lazy imports and first-use caches happen now.
        check(uploads(server.url, "warmup"))
        watch = TreeWatch()
        for name in ("tmp", "var_tmp", "shm"):
            watch.add(dirs[name])
        watch.add(tiny_model_dir)
        watch.add(REPO)
        watch.add("/", recursive=False)
        watch.drain(timeout_ms=300)  # forget what the warm-up left in flight
        canary = "CANARY" + secrets.token_hex(8)
        sent = uploads(server.url, canary)
        events = watch.drain(timeout_ms=500)
        watch.close()
        check(sent)
        # gunicorn's heartbeat: the worker fchmods its (empty) file in worker_tmp_dir.
        heartbeat = [e for e in events if "/wgunicorn-" in e.path and e.kinds == ("ATTRIB",)]
        assert unexpected(events, allowed=[e.path for e in heartbeat]) == []
        # Nothing of the uploads in the logs either.
        logs = server.logs()
        assert canary not in logs
        assert len([line for line in server.stdout if line.startswith('{"time"')]) >= 2 * len(sent)
        # No version in the Server header; CUDA/torch never in the master.
        assert not any(c.isdigit() for c in sent[0][2].headers.get("Server", ""))
        master = server.workers()[0].parent()
        maps = Path(f"/proc/{master.pid}/maps").read_text()
        assert "libtorch" not in maps and "libcuda" not in maps
    finally:
        server.stop()


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_uploads_succeed_under_a_read_only_root(tiny_model_dir):
    assert BWRAP, "bubblewrap is missing: ./scripts/setup installs it"
    wrapper = [
        BWRAP,
        "--die-with-parent",
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--tmpfs",
        "/dev/shm",
    ]
    env = {
        "M2FP_MODEL_DIR": str(tiny_model_dir),
        "M2FP_RATE_LIMIT": "1000 per minute",
        "M2FP_BAN_AFTER": "1000",
    }
    server = Gunicorn(env, wrapper=wrapper)
    try:
        check(uploads(server.url, "readonly"))
        # A few-KB PNG declaring 30000x30000: 413 without the worker's memory jumping.
        worker = server.workers()[0].pid
        before = _peak_rss(worker)
        r = requests.post(
            server.url + PARSE,
            data=images.png_bomb(),
            headers={"Content-Type": "image/png"},
            timeout=30,
        )
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        assert _peak_rss(worker) - before < 64 * 1024 * 1024
        assert "Read-only file system" not in server.logs()
    finally:
        server.stop()


def _burst(url: str, count: int) -> list[requests.Response]:
    """`count` parses from 4 threads, each on a new connection (spread over the workers)."""
    responses: list[requests.Response] = []
    lock = threading.Lock()

    def send(n):
        for _ in range(n):
            r = requests.post(
                url + PARSE,
                data=images.png(64, 48),
                timeout=60,
                headers={"Content-Type": "image/png", "Connection": "close"},
            )
            with lock:
                responses.append(r)

    threads = [threading.Thread(target=send, args=(count // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return responses


@pytest.mark.parametrize("storage", ["redis", "memory"])
def test_rate_limit_across_two_workers(tmp_path, tiny_model_dir, storage):
    redis = RedisServer(tmp_path) if storage == "redis" else None
    env = {
        "M2FP_MODEL_DIR": str(tiny_model_dir),
        "M2FP_RATE_LIMIT": "5 per minute",
        "M2FP_RATELIMIT_STORAGE": redis.url if redis else "memory://",
        # the burst is about the limit, not admission: however slow a busy machine parses
        "M2FP_LATENCY_TARGET_SECONDS": "600",
    }
    server = None
    try:
        server = Gunicorn(env, workers=2)
        assert len(server.workers()) == 2
        responses = _burst(server.url, 24)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {200, 429}, (
            [r.text for r in responses if r.status_code not in (200, 429)],
            server.logs()[-3000:],
        )
        if storage == "redis":
            assert statuses.count(200) == 5  # in total, whichever worker answered
            limited = next(r for r in responses if r.status_code == 429)
            assert limited.json()["error"]["code"] == "rate_limited"
            assert int(limited.headers["Retry-After"]) > 0
        else:
            # memory:// counts per worker: more than 5 got through. This is why several
            # workers or machines need M2FP_RATELIMIT_STORAGE=redis://...
            assert statuses.count(200) > 5
        for line in server.stdout:
            if line.startswith('{"time"'):
                json.loads(line)
    finally:
        if server:
            server.stop()
        if redis:
            redis.stop()


def test_preload_is_refused_loudly(tiny_model_dir):
    """With --preload the app (and its loading thread) is created in the master and the
    workers are forks without the engine's threads: they must say so, not hang."""
    env = {"M2FP_MODEL_DIR": str(tiny_model_dir)}
    server = Gunicorn(env, extra_args=["--preload"], wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while "Booting worker" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        r = requests.get(server.url + "/readyz", timeout=10)
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "not_ready"
        r = requests.post(
            server.url + PARSE, data=images.png(), timeout=10, headers={"Content-Type": "image/png"}
        )
        assert r.status_code == 503
        deadline = time.monotonic() + 10
        while "without --preload" not in server.logs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "without --preload" in server.logs()
    finally:
        server.stop()


# -- operations: the service's memory, swap, metrics and readiness of the whole instance ----------

SWAPS = "Filename\tType\tSize\tUsed\tPriority\n/dev/fakeswap\tpartition\t8388604\t0\t-2\n"


def _metrics(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = requests.get(url + "/metrics", timeout=10)
    assert r.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def _tree_pss(master: psutil.Process) -> int:
    return sum(p.memory_full_info().pss for p in [master, *master.children(recursive=True)])


def test_memory_is_the_services_and_swap_is_reported_once(tiny_model_dir, tmp_path):
    """Two workers, and swap active on the machine (a /proc/swaps seen through bubblewrap):
    the first worker says so once; the memory measured is the master's and its workers' PSS,
    not the machine's used memory (gigabytes on a shared machine)."""
    assert BWRAP, "bubblewrap is missing: ./scripts/setup installs it"
    swaps = tmp_path / "swaps"
    swaps.write_text(SWAPS)
    limit_mb = 64 * 1024
    env = {"M2FP_MODEL_DIR": str(tiny_model_dir), "M2FP_MEMORY_LIMIT_MB": str(limit_mb)}
    wrapper = [BWRAP, "--dev-bind", "/", "/", "--ro-bind", str(swaps), "/proc/swaps"]
    server = Gunicorn(env, workers=2, wrapper=wrapper)
    try:
        workers = server.workers()
        assert len(workers) == 2
        master = workers[0].parent()
        assert master.pid == workers[1].parent().pid
        time.sleep(SAMPLE_SECONDS + 0.1)  # a fresh sample, with both models loaded
        used = _metrics(server.url)[("m2fp_memory_usage_ratio", ())] * limit_mb * 1024 * 1024
        expected = _tree_pss(master)
        assert 0.75 * expected < used < 1.25 * expected, (used, expected)
        assert psutil.virtual_memory().used > 2 * expected  # what the machine-wide figure was
        warnings = [line for line in server.stderr if "swap is active" in line]
        assert len(warnings) == 1, server.logs()
        assert "/dev/fakeswap" in warnings[0] and "MemorySwapMax=0" in warnings[0]
    finally:
        server.stop()


def _value(data, name: str, **labels) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def _leave_before_the_answer(url: str) -> None:
    """Send a whole parse request, then close the connection without reading the answer."""
    body = images.png(640, 480)
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = (
            f"POST {PARSE} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode() + body)


def test_one_scrape_shows_the_whole_instance(tiny_model_dir):
    """Two workers: every scrape, whichever worker answers it, counts every request of the
    instance (prometheus-client's multiprocess mode, its directory on tmpfs, made fresh by the
    master and removed at exit), and a client that left before its answer is counted so."""
    env = {"M2FP_MODEL_DIR": str(tiny_model_dir), "M2FP_RATE_LIMIT": "1000 per minute"}
    server = Gunicorn(env, workers=2)
    try:
        found = re.search(r"metrics of all workers in (\S+)", server.logs())
        assert found, server.logs()
        metrics_dir = Path(found.group(1))
        assert metrics_dir.parent == Path("/dev/shm") and metrics_dir.is_dir()
        responses = _burst(server.url, 24)
        assert [r.status_code for r in responses] == [200] * 24
        parsed = {"route": PARSE, "method": "POST"}
        for _ in range(8):  # new connections: the scrapes land on both workers
            data = _metrics(server.url)
            assert _value(data, "m2fp_http_requests_total", status="200", **parsed) == 24
            assert _value(data, "m2fp_http_requests_total", status="client_closed", **parsed) == 0
            assert _value(data, "m2fp_stage_duration_seconds_count", stage="decode") == 24
        _leave_before_the_answer(server.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            data = _metrics(server.url)
            if _value(data, "m2fp_http_requests_total", status="client_closed", **parsed):
                break
            time.sleep(0.2)
        assert _value(data, "m2fp_http_requests_total", status="client_closed", **parsed) == 1
        assert _value(data, "m2fp_http_requests_total", status="200", **parsed) == 24
    finally:
        server.stop()
    assert not metrics_dir.exists()


def _wait_for_workers_ready(url: str, count: int, timeout: float = 30.0) -> None:
    """Each worker writes its gauges once a second (web/metrics.py REFRESH_SECONDS)."""
    deadline = time.monotonic() + timeout
    while _value(_metrics(url), "m2fp_workers_ready") != count:
        assert time.monotonic() < deadline, _metrics(url)
        time.sleep(0.2)


def test_readiness_holds_while_a_worker_restarts(tiny_model_dir):
    """Two workers; one exits (as after max_requests or a crash) and gunicorn starts another,
    which loads its model. Meanwhile every /readyz on the shared port answers 200 and every
    parse succeeds: the new worker takes no connection before its model is ready. The metrics
    show the workers, how many are ready, and how many have started."""
    env = {"M2FP_MODEL_DIR": str(tiny_model_dir), "M2FP_RATE_LIMIT": "1000 per minute"}
    server = Gunicorn(env, workers=2)
    try:
        _wait_for_workers_ready(server.url, 2)
        assert _value(_metrics(server.url), "m2fp_workers") == 2
        assert _value(_metrics(server.url), "m2fp_worker_starts_total") == 2
        ready_lines = sum("model ready" in line for line in server.stderr)
        close = {"Connection": "close"}  # a new connection each time: any worker may take it
        parses: list[int] = []
        restarted = threading.Event()

        def parse_meanwhile():
            while not restarted.is_set():
                r = requests.post(
                    server.url + PARSE,
                    data=images.png(64, 48),
                    timeout=30,
                    headers={"Content-Type": "image/png", **close},
                )
                parses.append(r.status_code)

        parser = threading.Thread(target=parse_meanwhile)
        parser.start()
        server.workers()[0].terminate()  # SIGTERM: it finishes and exits; a new one starts
        probes = []
        deadline = time.monotonic() + 120
        try:
            while sum("model ready" in line for line in server.stderr) <= ready_lines:
                assert time.monotonic() < deadline, server.logs()
                r = requests.get(server.url + "/readyz", timeout=10, headers=close)
                probes.append(r.status_code)
                time.sleep(0.02)
        finally:
            restarted.set()
            parser.join(60)
        assert len(probes) >= 10, "the new worker loaded too fast to tell"
        assert probes == [200] * len(probes)
        assert parses and parses == [200] * len(parses)
        _wait_for_workers_ready(server.url, 2)
        assert _value(_metrics(server.url), "m2fp_workers") == 2
        # the gone worker's start stays counted: the restart alert sees one more
        assert _value(_metrics(server.url), "m2fp_worker_starts_total") == 3
        assert len(server.workers()) == 2
    finally:
        server.stop()
