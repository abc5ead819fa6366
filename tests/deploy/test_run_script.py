"""scripts/run end to end: the README's one command, with a tiny model on free ports, then the
page over HTTPS with the dev CA it made, the redirect, and Ctrl-C (SIGINT) stopping both nginx
and gunicorn."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.paths import REPO
from tests.support.servers import free_port

pytestmark = [pytest.mark.deploy, pytest.mark.slow]


@pytest.mark.parametrize("to_group", [True, False], ids=["ctrl-c", "sigint-to-the-script"])
def test_scripts_run_serves_https_and_stops_both_on_ctrl_c(tmp_path, tiny_model_dir, to_group):
    https_port, http_port, app_port = free_port(), free_port(), free_port()
    var = tmp_path / "var"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    env.update(
        {
            "M2FP_MODEL_DIR": str(tiny_model_dir),
            "M2FP_HTTPS_PORT": str(https_port),
            "M2FP_HTTP_PORT": str(http_port),
            "M2FP_APP_PORT": str(app_port),
            "M2FP_LISTEN": "127.0.0.1",
            "M2FP_VAR_DIR": str(var),
            "M2FP_SKIP_SETUP": "1",  # ./scripts/test has just run scripts/setup
            "OMP_NUM_THREADS": "1",
        }
    )
    stderr = tmp_path / "run.err"
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "run")],
        cwd=tmp_path,  # the script finds the repository itself
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr.open("wb"),
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        deadline = time.monotonic() + 180
        while "run: ready: " not in stderr.read_text():
            assert proc.poll() is None, stderr.read_text()
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.2)
        ca = var / "tls" / "ca.pem"
        page = requests.get(f"https://localhost:{https_port}/", verify=ca, timeout=10)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
        assert page.headers["Strict-Transport-Security"].startswith("max-age=")
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=10)
        conn.request("GET", "/", headers={"Host": "localhost"})
        assert conn.getresponse().getheader("Location") == f"https://localhost:{https_port}/"
        conn.close()
        children = psutil.Process(proc.pid).children(recursive=True)
        names = {p.name() for p in children}
        assert "nginx" in names and any("gunicorn" in " ".join(p.cmdline()) for p in children)
        runtime = [p for p in Path("/dev/shm").glob("m2fp-run.*") if p.stat().st_uid == 0]
        conf = (var / "nginx" / "nginx.conf").read_text()
        runtime_dir = next(r for r in runtime if str(r) in conf)

        # Ctrl-C: the terminal sends SIGINT to the whole foreground process group; a
        # supervisor may signal the script alone
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], [p.cmdline() for p in alive]
        assert not runtime_dir.exists()
        text = stderr.read_text()
        assert "run: stopping" in text and "run: stopped" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_scripts_run_without_a_model_says_what_to_do(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    env.update(
        {
            "M2FP_MODEL_DIR": str(tmp_path / "empty"),
            "M2FP_VAR_DIR": str(tmp_path / "var"),
            "M2FP_SKIP_SETUP": "1",
        }
    )
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [str(REPO / "scripts" / "run")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert f"M2FP_MODEL_DIR={tmp_path / 'empty'} is not a model directory" in done.stderr
    assert "python -m m2fp download --dest" in done.stderr  # how to get one
    assert "configuration.json and pytorch_model.pt" in done.stderr
    assert not (tmp_path / "var" / "tls").exists()  # stopped before making anything


def test_scripts_run_reports_a_refused_model_and_stops_at_once(tmp_path, tiny_model_dir):
    """gunicorn's master refuses the model (here a wrong pin): the script passes on its reason,
    stops nginx and exits 1, without waiting for a /readyz that will never come."""
    https_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("M2FP_")}
    env.update(
        {
            "M2FP_MODEL_DIR": str(tiny_model_dir),
            "M2FP_WEIGHTS_SHA256": "0" * 64,
            "M2FP_HTTPS_PORT": str(https_port),
            "M2FP_HTTP_PORT": str(free_port()),
            "M2FP_APP_PORT": str(free_port()),
            "M2FP_LISTEN": "127.0.0.1",
            "M2FP_VAR_DIR": str(tmp_path / "var"),
            "M2FP_SKIP_SETUP": "1",
        }
    )
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "run")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 1, err
    refusal = "Error: the model cannot be served, not starting: "
    assert refusal in err and f"SHA-256 mismatch: expected {'0' * 64}" in err
    assert "run: gunicorn exited (status 1) before the service was ready" in err
    assert "run: ready" not in err and "through nginx" not in err
    with pytest.raises(ConnectionRefusedError):  # nginx is gone too
        socket.create_connection(("127.0.0.1", https_port), timeout=5).close()
