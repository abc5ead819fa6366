"""gunicorn.conf.py: the settings keep uploads off the disk and CUDA out of the master, and
every setting it names is one gunicorn knows."""

from __future__ import annotations

import runpy
import subprocess
import sys

from gunicorn.config import Config

from tests.support.paths import REPO


def test_gunicorn_settings():
    settings = runpy.run_path(str(REPO / "gunicorn.conf.py"))
    known = Config().settings
    for name in (
        "worker_class",
        "worker_tmp_dir",
        "preload_app",
        "control_socket_disable",
        "threads",
        "timeout",
        "accesslog",
        "bind",
    ):
        assert name in known, name  # a misspelt setting would be silently ignored
    # gthread, with request heads read on the main loop (gunicorn_worker.py)
    assert settings["worker_class"] == "gunicorn_worker.DeadlineThreadWorker"
    from gunicorn.workers.gthread import ThreadWorker

    from gunicorn_worker import DeadlineThreadWorker

    assert issubclass(DeadlineThreadWorker, ThreadWorker)
    assert settings["worker_tmp_dir"] == "/dev/shm"
    assert settings["preload_app"] is False
    assert settings["control_socket_disable"] is True
    assert settings["accesslog"] is None
    assert settings["threads"] == 16 + 4 + 4  # M2FP_QUEUE_MAX + M2FP_BATCH_MAX + 4
    unknown = {
        name
        for name, value in settings.items()
        if not name.startswith("_")
        and not callable(value)
        and not isinstance(value, type(sys))
        and not isinstance(value, type)
    } - set(known)
    assert unknown == set()


def test_gunicorn_config_imports_no_torch():
    """The gunicorn master loads its config file and (no preload) nothing of the app: the
    config must not pull in torch, let alone CUDA."""
    code = (
        "import runpy, sys; runpy.run_path('gunicorn.conf.py');"
        "assert 'torch' not in sys.modules, 'config imports torch'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
