"""Stopping and restarting real gunicorn (tiny model) without failing a request.

- SIGTERM to the master: for M2FP_DRAIN_SECONDS `/readyz` answers 503 `draining` at once while
  parses are still served; then the instance stops accepting (a new connection is refused at
  once, it does not hang) and finishes what is in flight.
- `scripts/restart`: gunicorn's USR2 re-exec; the new workers take connections only once their
  model is ready, then the old master is stopped and drains. A client loop running through it
  sees only 200s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support import images
from tests.support.paths import REPO
from tests.support.servers import Gunicorn

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]

PARSE = "/api/v1/parse?output=json"


def env(model_dir: Path, drain: float) -> dict[str, str]:
    return {
        "M2FP_MODEL_DIR": str(model_dir),
        "M2FP_RATE_LIMIT": "100000 per minute",
        "M2FP_DRAIN_SECONDS": str(drain),
    }


def parse(url: str, timeout: float = 30) -> requests.Response:
    return requests.post(
        url + PARSE, data=images.png(), headers={"Content-Type": "image/png"}, timeout=timeout
    )


def start_upload(port: int, body: bytes) -> http.client.HTTPConnection:
    """A parse whose head and first bytes are sent now, the rest by `finish_upload`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", PARSE)
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:100])
    return conn


def finish_upload(conn: http.client.HTTPConnection, body: bytes) -> int:
    conn.send(body[100:])
    response = conn.getresponse()
    response.read()
    conn.close()
    return response.status


def stop_group(pgid: int) -> None:
    """Every process of the instance's process group (an old and a new master included)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def test_sigterm_drains_then_refuses_new_connections_and_finishes_in_flight(tiny_model_dir):
    server = Gunicorn(env(tiny_model_dir, 4))
    try:
        body = images.png()
        server.process.send_signal(signal.SIGTERM)  # the master only, as docker/k8s do
        stopped_at = time.monotonic()
        time.sleep(0.3)
        in_flight = start_upload(server.port, body)  # finished after the drain
        ready = requests.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["code"] == "draining"
        assert int(ready.headers["Retry-After"]) >= 1
        during: list[int] = []  # a parse sent while draining is still served
        sender = threading.Thread(target=lambda: during.append(parse(server.url, 120).status_code))
        sender.start()
        time.sleep(max(0.0, stopped_at + 5.5 - time.monotonic()))  # the drain is over

        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            parse(server.url, timeout=5)
        assert time.monotonic() - started < 1.0  # refused, not hung
        assert finish_upload(in_flight, body) == 200
        sender.join(120)
        assert during == [200]
        assert server.process.wait(60) == 0
    finally:
        server.stop()
    log = "".join(server.stderr)
    assert "draining for 4 s" in log, log
    assert "Traceback" not in log, log


class Load:
    """Clients posting parses back to back until stopped; every outcome kept."""

    def __init__(self, url: str, clients: int = 2) -> None:
        self.url = url
        self.outcomes: list[str] = []
        self.t0 = time.monotonic()
        self.timeline: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # A shared CI machine can take tens of seconds per parse: give up late.
                outcome = str(parse(self.url, timeout=120).status_code)
            except requests.RequestException as exc:
                outcome = type(exc).__name__
            self.outcomes.append(outcome)
            self.timeline.append((round(started - self.t0, 1), outcome))

    def stop(self) -> list[str]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.outcomes


def test_restart_script_under_load_fails_no_request(tiny_model_dir, tmp_path):
    pidfile = tmp_path / "gunicorn.pid"
    # Two workers: the old master is stopped only once both new ones are ready.
    server = Gunicorn(env(tiny_model_dir, 2), workers=2, extra_args=["--pid", str(pidfile)])
    old_master = server.process.pid
    load = None
    try:
        load = Load(server.url)
        time.sleep(1.0)
        restart_started = time.monotonic() - load.t0
        restart = subprocess.run(
            [str(REPO / "scripts" / "restart"), str(pidfile)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        restart_ended = time.monotonic() - load.t0
        time.sleep(1.0)
        outcomes = load.stop()
        assert restart.returncode == 0, restart.stdout + restart.stderr + server.logs()
        assert not psutil.pid_exists(old_master) or psutil.Process(old_master).status() == (
            psutil.STATUS_ZOMBIE
        )
        new_master = int(pidfile.read_text())
        assert new_master != old_master and psutil.pid_exists(new_master)
        failed = [outcome for outcome in outcomes if outcome != "200"]
        assert not failed, json.dumps(load.timeline) + server.logs()
        # Requests were sent all through the restart, not only before or after it.
        during = [t for t, _ in load.timeline if restart_started <= t <= restart_ended]
        assert len(during) >= 2, (restart_started, restart_ended, load.timeline)
        assert requests.get(server.url + "/readyz", timeout=5).status_code == 200
        assert "restart: 2 new worker(s) ready, stopping the old master" in server.logs()
    finally:
        if load is not None:
            load.stop()
        stop_group(old_master)
        server.stop()
    assert "Traceback" not in server.logs()


def test_restart_whose_new_model_does_not_load_leaves_the_old_instance_serving(
    tiny_model_dir, tmp_path
):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    pidfile = tmp_path / "gunicorn.pid"
    server = Gunicorn(env(model_dir, 1), extra_args=["--pid", str(pidfile)])
    old_master = server.process.pid
    try:
        # The upgrade brings a checkpoint that is no checkpoint: the new workers cannot load it.
        (model_dir / "pytorch_model.pt").write_bytes(b"not a checkpoint" * 1000)
        restart = subprocess.run(
            [str(REPO / "scripts" / "restart"), str(pidfile), "120"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert restart.returncode == 1, restart.stderr + server.logs()
        assert f"master {old_master} keeps serving" in restart.stderr
        assert server.process.poll() is None
        assert int(pidfile.read_text()) == old_master
        assert not Path(f"{pidfile}.2").exists()
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        assert parse(server.url, timeout=120).status_code == 200
    finally:
        stop_group(old_master)
        server.stop()
    assert "the model did not load; the old instance keeps serving" in server.logs()
