"""`python -m m2fp_client parse DIR… --out DIR` against the real app (create_app with the tiny
model) served by werkzeug on 127.0.0.1. The app's WSGI callable is wrapped in a recorder that
notes, per parse request, when it arrived and finished, its status and headers, and how many
parses were in progress at once: it observes and changes nothing."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

from m2fp_client import ClientError
from m2fp_client.batch import FAILED, Throttle, plan_batch, rate_limit_wait
from m2fp_client.cli import _parser, query_params
from tests.support import images
from tests.support.paths import REPO

PARSE = "/api/v1/parse"


class Recorder:
    """WSGI middleware: one record per parse request, and the most in progress at once."""

    def __init__(self, app: Callable) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.active = 0
        self.max_active = 0
        self.records: list[dict[str, Any]] = []

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        if environ.get("PATH_INFO") != PARSE:
            return self.app(environ, start_response)
        record: dict[str, Any] = {"arrived": time.monotonic(), "query": environ["QUERY_STRING"]}
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)

        def start(status: str, headers: list, exc_info: Any = None) -> Any:
            record["status"] = int(status.split()[0])
            record["headers"] = dict(headers)
            return start_response(status, headers, exc_info)

        try:
            body = list(self.app(environ, start))  # the whole answer, inside the count
        finally:
            with self.lock:
                self.active -= 1
                record["finished"] = time.monotonic()
                self.records.append(record)
        return body

    def statuses(self) -> list[int]:
        return [r["status"] for r in sorted(self.records, key=lambda r: r["arrived"])]


@dataclass(frozen=True)
class Served:
    url: str
    recorder: Recorder


@pytest.fixture
def serve(make_app) -> Iterator[Callable[..., tuple[Served, Recorder]]]:
    """`serve(**settings)`: the app, with a recorder, answering on 127.0.0.1 from werkzeug's
    threaded server until the test ends; limits out of the way unless a test sets them."""
    servers: list[Any] = []

    def start(**settings: Any) -> tuple[Served, Recorder]:
        settings.setdefault("rate_limit", "10000 per minute")
        settings.setdefault("ban_after", 10000)
        app = make_app(**settings)  # waits until the model is loaded
        recorder = Recorder(app.wsgi_app)
        app.wsgi_app = recorder
        server = make_server("127.0.0.1", 0, app, threaded=True)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        assert requests.get(url + "/readyz", timeout=10).status_code == 200
        return Served(url, recorder), recorder

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "m2fp_client", "parse", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "M2FP_API_KEY"},
        timeout=timeout,
    )


def photos(folder: Path, count: int, *, width: int = 64, height: int = 48) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"p{i:02d}.jpg"
        path.write_bytes(images.jpeg(width, height))
        paths.append(path)
    return paths


def summary_lines(stdout: str) -> dict[str, str]:
    """Indented summary lines keyed by the input path they start with."""
    lines = [line.strip() for line in stdout.splitlines() if line.startswith("  ")]
    return {line.split(":")[0].split(" → ")[0]: line for line in lines}


def test_a_folder_of_good_and_bad_files_reports_each(serve, tmp_path):
    server, recorder = serve()
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "nested" / "deeper").mkdir(parents=True)
    (src / "good.png").write_bytes(images.png(80, 60))
    (src / "nested" / "beach.jpg").write_bytes(images.jpeg(64, 48))
    (src / "nested" / "deeper" / "pool.webp").write_bytes(images.webp(40, 30))
    (src / "notes.jpg").write_text("a text file named .jpg\n")
    (src / "broken.jpg").write_bytes(images.truncated_jpeg())
    (src / "anim.gif").write_bytes(images.gif())
    (src / "gif-named.png").write_bytes(images.gif())
    (src / ".hidden.jpg").write_bytes(images.jpeg())

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--concurrency", "2")

    assert done.returncode == 1, done.stderr
    assert "3 written, 0 already there, 3 failed (6 files" in done.stdout
    lines = summary_lines(done.stdout)
    for name, size in (("good", (80, 60)), ("nested/beach", (64, 48))):
        result = images.decode((out / f"{name}-overlay.png").read_bytes())
        assert result.size == size and result.format == "PNG"
    assert images.decode((out / "nested/deeper/pool-overlay.png").read_bytes()).size == (40, 30)
    # the API's verdict, with its code, message and request id
    broken = lines[str(src / "broken.jpg")]
    assert "422 unprocessable_image: " in broken and "(request id " in broken
    # refused here, unsent: they would count towards a ban
    for name in ("notes.jpg", "gif-named.png"):
        assert "unsupported_media_type: not a JPEG, PNG or WebP" in lines[str(src / name)]
    assert "skipped (not .jpg, .jpeg, .png or .webp): 1" in done.stdout
    assert str(src / "anim.gif") in lines
    assert ".hidden" not in done.stdout
    # what reached the server: the three good files and the truncated one, nothing else
    assert sorted(recorder.statuses()) == [200, 200, 200, 422]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        "good-overlay.png",
        "nested/beach-overlay.png",
        "nested/deeper/pool-overlay.png",
    ]
    # not a terminal: plain progress lines on stderr, ending with the total
    assert "progress: 6/6 3 written, 0 already there, 3 failed" in done.stderr


def test_outputs_and_query_options_pass_through(serve, tmp_path):
    server, recorder = serve()
    src = tmp_path / "in"
    photos(src, 2)
    out = tmp_path / "out"

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--output", "json",
                   "--param", "instances=false")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "p00.json").read_text())
    assert result["image"] == {"width": 64, "height": 48}
    assert all("mask" not in person for person in result["persons"])

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--output", "cutout",
                   "--classes", "2,13", "--format", "webp")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    cutout = images.decode((out / "p01-cutout.webp").read_bytes())
    assert cutout.format == "WEBP" and cutout.mode == "RGBA"
    assert "output=cutout&classes=2%2C13&format=webp" in recorder.records[-1]["query"]

    # one file and an --out ending with a slash: a batch of one, named after its input
    one = tmp_path / "one"
    done = run_cli(str(src / "p00.jpg"), "--out", f"{one}/", "--url", server.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in one.iterdir()] == ["p00-overlay.png"]

    # an option this client has never heard of goes as it is; the service's 400 is reported
    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--param", "colour=red")
    assert done.returncode == 1
    line = summary_lines(done.stdout)[str(src / "p00.jpg")]
    assert line.startswith(f"{src / 'p00.jpg'}: 400 bad_request: ") and "colour" in line


def test_the_concurrency_bound_holds_at_the_server(serve, tmp_path):
    server, recorder = serve()
    src = tmp_path / "in"
    photos(src, 10, width=192, height=144)
    for concurrency in (3, 1):
        recorder.max_active = 0
        out = tmp_path / f"out{concurrency}"
        done = run_cli(str(src), "--out", str(out), "--url", server.url,
                       "--concurrency", str(concurrency))  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(list(out.iterdir())) == 10
        assert recorder.max_active == concurrency  # reached, never passed


def test_retry_after_and_the_rate_limit_are_obeyed(serve, tmp_path):
    server, recorder = serve(rate_limit="2 per 2 seconds")
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 6)

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--concurrency", "3")

    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 written, 0 already there, 0 failed" in done.stdout
    assert re.search(r"waiting \d+ s: (429 rate_limited|the rate limit is spent)", done.stderr)
    records = sorted(recorder.records, key=lambda r: r["arrived"])
    refused = [r for r in records if r["status"] == 429]
    assert refused, "three workers against 2 per 2 s: the limit must have answered 429"
    # Three workers' opening burst meets a limit of two: one refusal. After that the client
    # sends only what X-RateLimit-Remaining allows; a probe sent on a Reset rounded to the
    # second may meet one more.
    assert len(refused) <= 2
    for r in refused:
        wait = float(r["headers"]["Retry-After"])
        assert wait >= 1
        # Requests already on their way when the 429 left may still arrive just after it;
        # any request sent later waits out the Retry-After.
        later = [x["arrived"] - r["finished"] for x in records if x["arrived"] > r["finished"]]
        early = [gap for gap in later if 0.5 < gap < wait - 0.05]
        assert early == [], f"requests {early} s after a 429 asking for {wait} s"
    # All six accepted, paced by the limit (2 per 2 s: the last at least 4 s after the first).
    accepted = [r["arrived"] for r in records if r["status"] == 200]
    assert len(accepted) == 6
    assert accepted[-1] - accepted[0] >= 4.0


def test_existing_outputs_are_kept_without_overwrite(serve, tmp_path):
    server, recorder = serve()
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 3)
    assert run_cli(str(src), "--out", str(out), "--url", server.url).returncode == 0
    mine = out / "p01-overlay.png"
    mine.write_bytes(b"my edit")
    (out / "p02-overlay.png").unlink()
    sent = len(recorder.records)

    done = run_cli(str(src), "--out", str(out), "--url", server.url)

    assert done.returncode == 0, done.stdout + done.stderr  # a rerun resumes
    assert "1 written, 2 already there, 0 failed" in done.stdout
    assert f"{mine} exists (--overwrite replaces it)" in done.stdout
    assert mine.read_bytes() == b"my edit"
    assert len(recorder.records) == sent + 1  # only the missing one was requested

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--overwrite")
    assert done.returncode == 0 and "3 written, 0 already there" in done.stdout
    assert images.decode(mine.read_bytes()).format == "PNG"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_ban_stops_the_batch_instead_of_knocking_on(serve, tmp_path):
    server, recorder = serve(ban_after=1, ban_seconds=3600)
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 4)
    (src / "a-broken.jpg").write_bytes(images.truncated_jpeg())

    done = run_cli(str(src), "--out", str(out), "--url", server.url, "--concurrency", "1")

    assert done.returncode == 1
    assert recorder.statuses() == [422, 429]  # the strike, the ban; then nothing more
    assert "stopped: the service asked to wait 3600 s (temporarily_banned)" in done.stdout
    assert "429 temporarily_banned" in summary_lines(done.stdout)[str(src / "p00.jpg")]
    assert "cancelled: 3 (the same command again finishes them)" in done.stdout


def test_ctrl_c_stops_cleanly_with_a_summary(serve, tmp_path):
    # One parse per 30 s: after the first, the client waits for the limit to have room.
    server, recorder = serve(rate_limit="1 per 30 seconds")
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 4)
    process = subprocess.Popen(
        [sys.executable, "-m", "m2fp_client", "parse", str(src), "--out", str(out),
         "--url", server.url, "--max-wait", "60"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not written(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        sent = len(recorder.records)
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert time.monotonic() - interrupted < 5
    assert process.returncode == 130, stderr
    assert "1 written, 0 already there, 0 failed, 3 cancelled" in stdout
    assert "interrupted: no request was started after Ctrl-C" in stdout
    assert "Traceback" not in stderr
    time.sleep(0.5)
    assert len(recorder.records) == sent  # nothing sent after Ctrl-C
    assert len(written(out)) == 1 and [p.name for p in out.iterdir()] == written(out)


def written(out: Path) -> list[str]:
    return [p.name for p in out.glob("*-overlay.png")] if out.is_dir() else []


def test_plan_names_outputs_after_inputs_and_refuses_collisions(tmp_path):
    src = tmp_path / "photos"
    (src / "trip").mkdir(parents=True)
    for name in ("beach.jpg", "beach.png", "trip/beach.JPEG", "notes.txt"):
        (src / name).write_bytes(b"x")
    out = src / "parsed"  # inside the input folder: never read back as input
    (out / "old").mkdir(parents=True)
    (out / "old" / "beach-overlay.png").write_bytes(b"x")

    plan = plan_batch([src], out_dir=out, params={"output": "overlay", "format": "webp"})
    with pytest.raises(ClientError, match="is an input folder"):
        plan_batch([src / "trip"], out_dir=src / "trip" / ".", params={"output": "json"})

    assert [(j.source, j.target) for j in plan.jobs] == [
        (src / "trip/beach.JPEG", out / "trip/beach-overlay.webp")
    ]
    assert {(c.source.name, c.state, c.code) for c in plan.conflicts} == {
        ("beach.jpg", FAILED, "output_conflict"),
        ("beach.png", FAILED, "output_conflict"),
    }
    assert plan.skipped == [src / "notes.txt"]
    with pytest.raises(ClientError, match="format must be a plain name"):
        plan_batch([src], out_dir=out, params={"output": "overlay", "format": "../png"})
    twice = plan_batch([src / "trip", src / "trip/beach.JPEG"], out_dir=out, params={})
    assert [j.target for j in twice.jobs] == [out / "beach-overlay.png"] and not twice.conflicts
    json_plan = plan_batch([src / "trip/beach.JPEG"], out_dir=out, params={"output": "json"})
    assert json_plan.jobs[0].target == out / "beach.json"


def test_throttle_pause_probe_and_budget():
    throttle = Throttle()
    assert throttle.acquire() is False  # nothing known yet: go
    throttle.release(False, answered=True, remaining=1)
    assert throttle.acquire() is False  # the last of the budget
    got: list[bool | None] = []
    waiter = threading.Thread(target=lambda: got.append(throttle.acquire()))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # budget spent while a request is on its way: wait
    paused = time.monotonic()
    throttle.pause(0.5)
    throttle.release(False, answered=True, remaining=0)  # an answer from before the pause
    waiter.join(5)
    assert got == [True] and time.monotonic() - paused >= 0.5  # after the pause: one probe
    second: list[bool | None] = []
    follower = threading.Thread(target=lambda: second.append(throttle.acquire()))
    follower.start()
    follower.join(0.3)
    assert follower.is_alive()  # the probe is out: the others wait for its answer
    throttle.release(True, answered=True, remaining=5)
    follower.join(5)
    assert second == [False]
    throttle.cancel()
    assert throttle.acquire() is None


def test_an_unreachable_service_stops_the_batch(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 5)
    with socket.socket() as closed:  # a port nobody listens on once this closes
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    started = time.monotonic()
    done = run_cli(str(src), "--out", str(out), "--url", url, "--retries", "1")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "stopped: could not connect to " in done.stdout
    assert "connection_failed" in done.stdout and "cancelled" in done.stdout
    assert time.monotonic() - started < 20  # not five files times the retries
    assert written(out) == []


def test_a_terminal_gets_a_progress_bar(serve, tmp_path):
    server, _ = serve()
    src, out = tmp_path / "in", tmp_path / "out"
    photos(src, 3)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    chunks: list[bytes] = []

    def read_screen() -> None:
        with contextlib.suppress(OSError):  # EIO once the terminal's last writer is gone
            while chunk := os.read(primary, 65536):
                chunks.append(chunk)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "m2fp_client", "parse", str(src), "--out", str(out),
             "--url", server.url],
            cwd=REPO, stdout=subprocess.PIPE, stderr=secondary, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(secondary)
        reader.join(10)
        os.close(primary)
    screen = b"".join(chunks)
    assert done.returncode == 0, done.stdout
    text = screen.decode("utf-8", "replace")
    assert "100%" in text and "3/3" in text and "img" in text  # tqdm's bar, full
    assert "progress:" not in text  # not the plain lines
    assert "3 written" in done.stdout  # the summary stays on stdout


def test_the_rate_limit_wait_uses_the_servers_clock_only_when_ours_is_off():
    date = "Sat, 05 Dec 2026 08:00:00 GMT"  # 1796457600
    headers = {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1796457603", "Date": date}
    assert rate_limit_wait(headers, now=1796457600.5) == 2.5  # our clock, finer than Date
    assert rate_limit_wait(headers, now=1796457000.0) == 3.0  # ours 10 min slow: the server's
    assert rate_limit_wait({**headers, "X-RateLimit-Remaining": "1"}, now=0) is None
    assert rate_limit_wait({"X-RateLimit-Remaining": "0"}, now=0) is None


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], {"output": "overlay"}),
        (["--cutout", "hair,face", "--format", "webp"],
         {"output": "cutout", "classes": "hair,face", "format": "webp"}),
        (["--param", "output=matte", "--param", "person=2"], {"output": "matte", "person": "2"}),
        (["--json", "--no-instances", "--param", "mask_format=png"],
         {"output": "json", "instances": "false", "mask_format": "png"}),
    ],
)  # fmt: skip
def test_command_line_options_become_query_parameters(argv, expected):
    assert query_params(_parser().parse_args(["parse", "a.jpg", *argv])) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--json", "--output", "cutout"], "name different outputs"),
        (["--alpha", "0.5", "--param", "alpha=0.4"], "alpha is given twice"),
        (["--param", "alpha"], "--param takes KEY=VALUE"),
    ],
)
def test_contradictory_options_are_usage_errors(argv, message):
    with pytest.raises(ClientError, match=message):
        query_params(_parser().parse_args(["parse", "a.jpg", *argv]))
