"""gunicorn settings: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Command-line flags win over this file (`-b 127.0.0.1:8001`, `--threads 16`). The master reads
the settings (a malformed M2FP_* variable stops it at once, not each worker) but imports nothing
of the app and never touches CUDA: no preload, the model loads in each worker (a fork of a
CUDA-initialised process cannot use CUDA). One worker holds one model; scale with more gunicorn
instances (one per GPU, `CUDA_VISIBLE_DEVICES=i`), each on its own port behind nginx.

Metrics are the instance's: the master makes a fresh directory on tmpfs for prometheus-client's
multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, before any worker starts), marks each worker that
exits dead (its live gauges leave the sums; its counters stay), and removes the directory at
exit. One scrape, answered by any worker, shows all of them (web/metrics.py). A worker whose
model is loading stays off the port while another takes connections (`post_worker_init`,
web/ops.py), so /readyz answers for the instance.

Before any worker starts, the master checks the model (`on_starting`): the directory, the key,
every chunk of an encrypted file and the SHA-256 pin, streaming, without keeping the plaintext
(`security.model_crypto.check_weights`). A failure stops gunicorn with exit status 1 and one
line on stderr, `Error: the model cannot be served, not starting: <reason>`. What goes wrong
later (a worker respawned after the file changed, a checkpoint that does not fit the
configuration) leaves that worker up and not ready (web/runtime.py).
"""

import logging
import math
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Light: no torch, no Flask, no CUDA.
import lifecycle  # noqa: E402
from security.model_crypto import ModelProtectionError, check_weights  # noqa: E402
from settings import Settings  # noqa: E402

_settings = Settings.from_env()

bind = ["127.0.0.1:8000"]  # loopback: nginx in front terminates TLS
# gthread whose main loop reads request heads and whose threads read each request by a
# deadline (gunicorn_worker.py): clients that reach this port directly cannot hold its threads
# with unfinished heads or trickling bodies; gunicorn's own errors are JSON.
worker_class = "gunicorn_worker.DeadlineThreadWorker"
# workers: gunicorn's default, $WEB_CONCURRENCY or 1.
# Enough threads for a full engine (M2FP_QUEUE_MAX waiting + M2FP_BATCH_MAX running) and a few
# more for decoding and the other routes: the engine's bounded queue, not gunicorn's unbounded
# thread-pool backlog, is where overload shows (503 + Retry-After instead of growing latency).
threads = _settings.queue_max + (_settings.batch_max or 4) + 4
preload_app = False
# The heartbeat file in RAM: nothing on disk, and it works under a read-only root.
worker_tmp_dir = "/dev/shm"
# gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn by default.
control_socket_disable = True
# No shorter than nginx waits for an answer, both derived from M2FP_LATENCY_TARGET_SECONDS
# (http_contract.time_limits); gthread workers heartbeat from their main thread regardless.
timeout = _settings.time_limits.worker_timeout_s
# From SIGTERM to SIGKILL: a stopping worker drains (serves on, /readyz 503 `draining`) for
# M2FP_DRAIN_SECONDS, then finishes its in-flight requests, up to the longest parse (the
# engine's deadline), with 5 s of margin.
graceful_timeout = math.ceil(_settings.drain_seconds + _settings.time_limits.engine_deadline_s + 5)
keepalive = 5
# The audit log (one JSON line per request on stdout) replaces the access log, which would
# carry query strings; operator messages go to stderr.
accesslog = None
errorlog = "-"
# gunicorn's own lines without request data (an exception's text quotes the bytes it read):
# gunicorn_worker.RequestDataFilter.
logger_class = "gunicorn_worker.RedactingLogger"
loglevel = "info"
capture_output = False
# Bounded request heads (gunicorn's defaults, stated).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
# gunicorn's Server header is "gunicorn" without a version (gunicorn.http.wsgi.Response uses
# gunicorn.SERVER); nginx replaces it with its own in front.


_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METRICS_DIR_PARENT = "/dev/shm"  # tmpfs: counters in memory, and writable under a read-only root


def on_starting(server):
    # No core dumps: a crashing worker would write its memory, uploaded images included, to disk.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    check_model(server)
    global _handoff
    _handoff = lifecycle.Handoff.for_this_master(server.cfg.workers)
    longest = _settings.drain_seconds + _settings.time_limits.engine_deadline_s
    if server.cfg.graceful_timeout < longest:
        server.log.warning(
            "graceful_timeout %d s is shorter than M2FP_DRAIN_SECONDS (%g s) + the engine's"
            " deadline (%g s) for the longest parse: a stop may kill requests in progress",
            server.cfg.graceful_timeout,
            _settings.drain_seconds,
            _settings.time_limits.engine_deadline_s,
        )
    make_metrics_dir(server)


def make_metrics_dir(server) -> None:
    """A fresh, private directory for this master's workers (a re-executed master makes its
    own: values of another instance never mix in)."""
    parent = _METRICS_DIR_PARENT if os.access(_METRICS_DIR_PARENT, os.W_OK) else None
    os.environ[_METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="m2fp-metrics-", dir=parent)
    server.log.info("metrics of all workers in %s", os.environ[_METRICS_DIR_ENV])


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    directory = os.environ.get(_METRICS_DIR_ENV)
    if directory and os.path.basename(directory).startswith("m2fp-metrics-"):
        shutil.rmtree(directory, ignore_errors=True)


def post_fork(server, worker):
    # In the worker, before the app: the service's memory is the master's process tree
    # (web/overload.py), and the first worker says once whether that memory can be swapped out.
    from web.overload import SERVICE_PID_ENV, swap_warning

    os.environ[SERVICE_PID_ENV] = str(server.pid)
    if worker.age == 1:
        warning = swap_warning()
        if warning:
            server.log.warning(warning)


def check_model(server) -> None:
    """Refuse to start when the model cannot be served. gunicorn's `BaseApplication.run`
    prints a RuntimeError raised here as `Error: <message>` and exits 1 before binding or
    forking; messages name paths, hashes and key ids, never key material."""
    started = time.perf_counter()
    # The package's warnings (a plaintext copy beside the .enc, an unpinned envelope file) in
    # gunicorn's log, for the check only: workers configure their own handlers.
    crypto_log = logging.getLogger("security.model_crypto")
    handlers = [h for h in server.log.error_log.handlers if h not in crypto_log.handlers]
    for handler in handlers:
        crypto_log.addHandler(handler)
    try:
        checked = check_weights(
            _settings.model_dir,
            key_file=_settings.weights_key_file,
            key_text=_settings.weights_key,
            expected_sha256=_settings.weights_sha256,
        )
    except (ModelProtectionError, OSError) as exc:
        if server.pidfile is not None:  # gunicorn wrote it just before this hook
            server.pidfile.unlink()
        raise RuntimeError(f"the model cannot be served, not starting: {exc}") from None
    finally:
        for handler in handlers:
            crypto_log.removeHandler(handler)
    server.log.info(
        "model checked in %.1f s: %s, %d bytes, %s, sha256 %s %s",
        time.perf_counter() - started,
        checked.path,
        checked.size,
        f"encrypted, key id {checked.key_id}" if checked.encrypted else "not encrypted",
        checked.sha256,
        "(pinned)" if checked.pinned else "(not pinned: M2FP_WEIGHTS_SHA256 is not set)",
    )


# -- drain and restarts (lifecycle.py) ----------------------------------------------------------
_handoff: lifecycle.Handoff | None = None  # set in the master by on_starting after a USR2


def post_worker_init(worker):
    lifecycle.drain_on_term(worker, _settings.drain_seconds)
    if "m2fp_service" not in getattr(worker.wsgi, "extensions", {}):
        return
    if _handoff is not None:  # a re-executed master's worker: ready before the old ones leave
        _handoff.wait_ready(worker, worker.wsgi.extensions["m2fp_service"].runtime)
    hold_until_ready_of_the_instance(worker)


def hold_until_ready_of_the_instance(worker) -> None:
    # Readiness of the instance (web/ops.py): a worker whose model is still loading stays off
    # the shared port while another worker takes the connections, so /readyz does not answer
    # 200 and 503 in turn while one worker restarts. The instance's first worker takes them at
    # once (it answers 503 until its model is ready); the others of the first batch wait for
    # their model; a later one (a restart) waits while any other worker takes connections.
    from web.ops import hold_until_ready

    if worker.age == 1:
        others = lambda: 0  # noqa: E731
    elif worker.age <= worker.cfg.workers:
        others = lambda: 1  # noqa: E731
    else:
        others = None  # m2fp_workers of the instance
    state = hold_until_ready(
        worker.wsgi, notify=worker.notify, alive=lambda: worker.alive, others=others
    )
    worker.log.info("worker %s takes connections; its model is %s", worker.pid, state)


def pre_exec(server):
    lifecycle.reexec_as_started(server.START_CTX["args"])
