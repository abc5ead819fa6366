"""Real servers for the socket-level tests: gunicorn running `app:create_app()` (the one
launcher every test that needs the app behind a socket uses) and redis-server, each on
127.0.0.1 and a port chosen at run time, always stopped afterwards; `free_port` and
`wait_for_port` for the servers the tests start themselves."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import psutil
import requests

from tests.support.paths import REPO

GUNICORN = [sys.executable, "-m", "gunicorn"]
_LISTENING = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+)")
S = TypeVar("S", bound=socketserver.BaseServer)


def gunicorn_command(
    *, workers: int = 1, wrapper: Sequence[str] = (), extra_args: Sequence[str] = ()
) -> list[str]:
    return [
        *wrapper,
        *GUNICORN,
        "-c",
        "gunicorn.conf.py",
        "-b",
        "127.0.0.1:0",
        "-w",
        str(workers),
        "--threads",
        "4",
        *extra_args,
        "app:create_app()",
    ]


def gunicorn_env(env: dict[str, str]) -> dict[str, str]:
    """This process's environment without its M2FP_* variables, plus `env`."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    full_env.update(env)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    # No drain on the way out unless a test asks for one (tests/deploy/test_drain.py): each
    # stop would otherwise wait M2FP_DRAIN_SECONDS for a load balancer there is none of.
    full_env.setdefault("M2FP_DRAIN_SECONDS", "0")
    return full_env


def gunicorn_setting(name: str, env: dict[str, str]) -> object:
    """A setting of gunicorn.conf.py as gunicorn reads it under `env` (the container's M2FP_*
    variables: some settings follow from them), in a subprocess."""
    code = f"import runpy; print(repr(runpy.run_path('gunicorn.conf.py')[{name!r}]))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return ast.literal_eval(out.strip())


def run_gunicorn(env: dict[str, str], *, timeout: float = 60.0) -> tuple[int, str, str]:
    """Run gunicorn as `Gunicorn` starts it, to its exit (a start that must fail):
    (exit status, stdout, stderr). One still running after `timeout` is killed, with its
    workers, and reported as a failure of the test."""
    process = subprocess.Popen(
        gunicorn_command(),
        cwd=REPO,
        env=gunicorn_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"gunicorn still running after {timeout} s:\n{out}{err}") from None
    return process.returncode, out, err


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py -b 127.0.0.1:0 'app:create_app()'`, optionally wrapped
    (bubblewrap), started in its own session and ready once every worker loaded its model and
    /readyz answers 200 (`wait_ready=False`: once it listens). The port is the one gunicorn
    reports.

    stdout (the audit log) and stderr are kept in memory, or with `log_dir` written by gunicorn
    itself to `log_dir/app.out` and `log_dir/app.err` (`stdout_path`, `stderr_path`): a test
    that watches the disk then sees the app write its logs and nothing else. Either way
    `stdout` and `stderr` are the lines so far."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        workers: int = 1,
        wrapper: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        wait_ready: bool = True,
        ready_timeout: float = 120.0,
        log_dir: Path | None = None,
    ) -> None:
        self.stdout_path: Path | None = None
        self.stderr_path: Path | None = None
        outputs: tuple = (subprocess.PIPE, subprocess.PIPE)
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            self.stdout_path, self.stderr_path = log_dir / "app.out", log_dir / "app.err"
            outputs = (self.stdout_path.open("wb"), self.stderr_path.open("wb"))
        self.process = subprocess.Popen(
            gunicorn_command(workers=workers, wrapper=wrapper, extra_args=extra_args),
            cwd=REPO,
            env=gunicorn_env(env),
            stdout=outputs[0],
            stderr=outputs[1],
            start_new_session=True,
        )
        self._lines: tuple[list[str], list[str]] = ([], [])
        self._readers: list[threading.Thread] = []
        if log_dir is None:
            streams = (self.process.stdout, self.process.stderr)
            for stream, lines in zip(streams, self._lines, strict=True):
                reader = threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                reader.start()
                self._readers.append(reader)
        else:
            for handle in outputs:
                handle.close()  # gunicorn holds its own copies
        self.port = 0
        try:
            if wait_ready:
                self._wait_ready(workers, ready_timeout)
            else:
                self._wait_port(ready_timeout)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _read(stream, lines: list[str]) -> None:  # noqa: ANN001
        for raw in iter(stream.readline, b""):
            lines.append(raw.decode("utf-8", "replace"))

    @property
    def stdout(self) -> list[str]:
        if self.stdout_path is not None:
            return self.stdout_path.read_text(errors="replace").splitlines(keepends=True)
        return list(self._lines[0])

    @property
    def stderr(self) -> list[str]:
        if self.stderr_path is not None:
            return self.stderr_path.read_text(errors="replace").splitlines(keepends=True)
        return list(self._lines[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _wait_port(self, timeout: float) -> None:
        """Until gunicorn says where it listens; a gunicorn that exits first fails at once."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr:
                match = _LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
                    return
            if self.process.poll() is not None or time.monotonic() > deadline:
                for reader in self._readers:
                    reader.join(5)  # the exit's last lines
                raise RuntimeError("gunicorn did not start:\n" + self.logs())
            time.sleep(0.1)

    def _wait_ready(self, workers: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._wait_port(timeout)
        ready = 0
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gunicorn exited:\n" + self.logs())
            # Each worker loads its own model: wait until all of them said so.
            ready = sum("model ready" in line for line in self.stderr)
            if ready >= workers:
                response = requests.get(self.url + "/readyz", timeout=5)
                if response.status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn not ready ({ready}/{workers} workers):\n" + self.logs())

    def logs(self) -> str:
        return "".join(self.stdout) + "".join(self.stderr)

    def audit(self) -> list[dict]:
        """The audit log so far: the JSON lines on stdout."""
        return [json.loads(line) for line in self.stdout if line.startswith("{")]

    def processes(self) -> list[psutil.Process]:
        """The launched process and all its descendants (wrapper, master, workers)."""
        root = psutil.Process(self.process.pid)
        return [root, *root.children(recursive=True)]

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes()}

    def workers(self) -> list[psutil.Process]:
        """gunicorn's workers: the processes that have no children of their own."""
        return [p for p in self.processes() if not p.children() and p.pid != self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        for reader in self._readers:
            reader.join(5)


@contextlib.contextmanager
def serving(server: S) -> Iterator[S]:
    """`server` (a `socketserver` server, already bound) answering from a daemon thread until
    the block ends; then shut down and closed."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1 (bind port 0, read it, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, *, timeout: float = 15.0, proc: subprocess.Popen | None = None
) -> None:
    """Until something accepts connections on 127.0.0.1:`port`; `proc` exiting first fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class RedisServer:
    """redis-server on 127.0.0.1 and a free port (or `port`: a restart where an earlier one
    listened), persistence off, working dir `directory`."""

    def __init__(self, directory: Path, attempts: int = 5, *, port: int | None = None) -> None:
        for _ in range(1 if port else attempts):
            self.port = port or free_port()
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(directory),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._ready():
                return
            self.stop()  # the port was taken meanwhile: try another
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ready(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
