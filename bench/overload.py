"""Goodput under overload: parses per second at the service's capacity and at four times it,
side by side, with closed-loop clients that ignore Retry-After (each sends its next request the
moment it has an answer, 200 or 503).

Usage: .venv/bin/python bench/overload.py [--clients 16] [--factor 4] [--seconds 30]
           [--photo 640x480] [--app-dir DIR] [--env M2FP_X=Y ...]

Starts `gunicorn -c gunicorn.conf.py 'app:create_app()'` on 127.0.0.1 (a free port), one worker
with the thread count gunicorn.conf.py gives, a tiny seeded model (as tests/support/servers.py
does), then runs `--clients` clients (1x: the engine's queue and batch, what the service holds
without refusing) and `--factor` times as many (4x) against the same server, each for a warm-up
and `--seconds` of measurement. Prints, per load: goodput (200s per second), the share of 503s,
refusal latency (p50/p95), the parses' latency, anything else (504, 500, errors); then the
goodput ratio 4x/1x. `--app-dir` runs another checkout (e.g. `git archive main | tar -x -C DIR`)
for a before/after comparison with the same clients.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support import images  # noqa: E402
from tests.support.servers import _LISTENING, gunicorn_command, gunicorn_env  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARSE = "/api/v1/parse?output=json"


@dataclass
class Phase:
    clients: int
    seconds: float = 0.0
    statuses: Counter = field(default_factory=Counter)
    ok_latency: list[float] = field(default_factory=list)
    refusal_latency: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    app_refusal_ms: list[float] = field(default_factory=list)  # the app's own, from its audit
    window: tuple[float, float] = (0.0, 0.0)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def goodput(self) -> float:
        return self.statuses[200] / self.seconds

    @property
    def answers(self) -> int:
        return sum(self.statuses.values())

    def record(self, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[status] += 1
            if status == 200:
                self.ok_latency.append(seconds)
            elif status == 503:
                self.refusal_latency.append(seconds)


def client(port: int, body: bytes, phase: Phase, measuring: threading.Event, stop: threading.Event):
    """One closed-loop client on a keep-alive connection; answers count while `measuring`."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    headers = {"Content-Type": "image/jpeg"}
    reused = False
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("POST", PARSE, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            status = response.status
            reused = True
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            # gunicorn closes a kept-alive connection whose unread body is over 64 KiB (a
            # refusal reads no body): resend on a new one at once, as HTTP clients do
            if not reused and measuring.is_set():
                with phase.lock:
                    phase.errors[type(exc).__name__] += 1
            reused = False
            continue
        if measuring.is_set():
            phase.record(status, time.perf_counter() - started)
    conn.close()


def run_phase(port: int, body: bytes, clients: int, warmup: float, seconds: float) -> Phase:
    phase = Phase(clients)
    measuring, stop = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=client, args=(port, body, phase, measuring, stop), daemon=True)
        for _ in range(clients)
    ]
    for thread in threads:
        thread.start()
    time.sleep(warmup)
    measuring.set()
    started = time.perf_counter()
    time.sleep(seconds)
    measuring.clear()
    phase.window = (started, time.perf_counter())
    phase.seconds = phase.window[1] - started
    stop.set()
    for thread in threads:
        thread.join(300)
    return phase


def merge(phases: list[Phase]) -> Phase:
    merged = Phase(phases[0].clients)
    for phase in phases:
        merged.seconds += phase.seconds
        merged.statuses += phase.statuses
        merged.errors += phase.errors
        merged.ok_latency += phase.ok_latency
        merged.refusal_latency += phase.refusal_latency
        merged.app_refusal_ms += phase.app_refusal_ms
    return merged


def quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


class Server:
    """gunicorn with the app in `app_dir`, as tests/support/servers.py starts it."""

    def __init__(self, app_dir: Path, env: dict[str, str], threads: int) -> None:
        command = gunicorn_command(extra_args=("--threads", str(threads)))
        self.process = subprocess.Popen(
            command,
            cwd=app_dir,
            env=gunicorn_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.port = 0
        self.log: list[str] = []
        self.audit: list[tuple[float, int, float]] = []  # (arrival, status, latency_ms)
        threading.Thread(target=self._read_audit, daemon=True).start()
        deadline = time.monotonic() + 180
        for line in self.process.stderr:
            self.log.append(line)
            if match := _LISTENING.search(line):
                self.port = int(match.group(1))
            if "model ready" in line:
                break
            if time.monotonic() > deadline:
                break
        threading.Thread(target=self._drain, daemon=True).start()
        if not self.port or self.process.poll() is not None:
            self.stop()
            raise SystemExit("gunicorn did not start:\n" + "".join(self.log))

    def _read_audit(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                entry = json.loads(line)
                self.audit.append((time.perf_counter(), entry["status"], entry["latency_ms"]))

    def refusals_ms(self, window: tuple[float, float]) -> list[float]:
        """The app's own latency of the 503s it logged within `window`."""
        start, end = window
        return [ms for at, status, ms in self.audit if status == 503 and start <= at <= end]

    def _drain(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def report(phase: Phase, label: str) -> str:
    others = {k: v for k, v in phase.statuses.items() if k not in (200, 503)}
    refused = phase.statuses[503] / phase.answers if phase.answers else float("nan")
    return (
        f"| {label} | {phase.clients} | {phase.goodput:.2f} | {phase.statuses[200]} "
        f"| {refused:.1%} | {quantile(phase.refusal_latency, 0.5) * 1000:.1f} / "
        f"{quantile(phase.refusal_latency, 0.95) * 1000:.1f} "
        f"| {quantile(phase.app_refusal_ms, 0.5):.1f} / {quantile(phase.app_refusal_ms, 0.95):.1f} "
        f"| {quantile(phase.ok_latency, 0.5):.2f} / {quantile(phase.ok_latency, 0.95):.2f} "
        f"| {dict(others) or '-'} {dict(phase.errors) or ''} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="clients at 1x capacity")
    parser.add_argument("--factor", type=int, default=4, help="the overload, in capacities")
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement per phase")
    parser.add_argument("--rounds", type=int, default=2, help="1x and 4x phases, alternating")
    parser.add_argument("--warmup", type=float, default=8.0, help="seconds before measuring")
    parser.add_argument("--photo", default="640x480", help="the upload, WIDTHxHEIGHT JPEG")
    parser.add_argument("--model-dir", type=Path, help="default: a tiny seeded model")
    parser.add_argument("--app-dir", type=Path, default=REPO, help="the checkout to serve")
    parser.add_argument("--env", action="append", default=[], metavar="M2FP_X=Y")
    parser.add_argument(
        "--client-nice", type=int, default=0, help="lower the clients' CPU priority by this"
    )
    args = parser.parse_args()
    model_dir = args.model_dir
    if model_dir is None:
        from tests.support.model_factory import write_tiny_model_dir

        model_dir = write_tiny_model_dir(tempfile.mkdtemp(prefix="m2fp-bench-"), seed=0)
    env = {
        "M2FP_MODEL_DIR": str(model_dir),
        "M2FP_RATE_LIMIT": "1000000 per minute",
        "M2FP_BAN_AFTER": "1000000",
        **dict(item.split("=", 1) for item in args.env),
    }
    queue_max = int(env.get("M2FP_QUEUE_MAX", "16"))
    batch_max = int(env.get("M2FP_BATCH_MAX", "4"))  # gunicorn.conf.py counts auto as 4
    threads = queue_max + batch_max + 4  # gunicorn.conf.py's count
    width, height = (int(x) for x in args.photo.split("x"))
    body = images.jpeg(width, height)
    server = Server(args.app_dir, env, threads)
    if args.client_nice:
        os.nice(args.client_nice)
    phases: list[Phase] = []
    try:
        # alternating loads, so that a neighbour's burst on a shared machine hits both
        for _ in range(args.rounds):
            for clients in (args.clients, args.clients * args.factor):
                phases.append(run_phase(server.port, body, clients, args.warmup, args.seconds))
    finally:
        server.stop()
    for phase in phases:
        phase.app_refusal_ms = server.refusals_ms(phase.window)
    base = merge([p for p in phases if p.clients == args.clients])
    over = merge([p for p in phases if p.clients != args.clients])
    print(f"app: {args.app_dir}; photo {args.photo} JPEG ({len(body)} B); env {args.env}")
    print(
        f"gunicorn: 1 worker, {threads} threads; {args.rounds} x {args.seconds:g} s measured"
        " per load, alternating"
    )
    print()
    print(
        "| load | clients | goodput (parses/s) | 200s | 503 share "
        "| 503 at the client p50 / p95 (ms) | 503 in the app p50 / p95 (ms) "
        "| 200 at the client p50 / p95 (s) | other |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    if args.rounds > 1:
        for i, phase in enumerate(phases):
            label = "1x" if phase.clients == args.clients else f"{args.factor}x"
            print(report(phase, f"round {i // 2 + 1}, {label}"))
    print(report(base, "1x"))
    print(report(over, f"{args.factor}x"))
    print()
    print(f"goodput {args.factor}x / 1x: {over.goodput / base.goodput:.2f}")


if __name__ == "__main__":
    main()
