"""Graceful drain and zero-downtime restarts of the gunicorn workers (`gunicorn.conf.py`'s hooks).

The standard library only: gunicorn's master imports this module with its configuration and
must not import the app (Flask, torch). The app reads a worker's `DrainState` in `/readyz`.

**Drain.** SIGTERM reaches each worker (from its master stopping, from a process-group kill, or
from a reload replacing it). The worker then keeps serving for M2FP_DRAIN_SECONDS while
`/readyz` answers 503 `draining`, so a load balancer that probes it takes it out of rotation
before it stops; then it closes its listening sockets (a new connection is refused at once
instead of waiting in a backlog nobody accepts from), finishes the requests in flight and exits.
A second SIGTERM changes nothing; SIGQUIT or SIGINT still stop at once.

**Restart (USR2).** `kill -USR2 <master>` re-executes gunicorn: a new master on the same
sockets beside the old one. Its workers take connections only once their model is ready (the
old workers serve meanwhile); when all of them are, the last one asks the old master to stop
(SIGTERM), and the old workers drain as above. A new worker whose model does not load exits
with gunicorn's boot-error status, which stops the new master: the old instance keeps serving.
`scripts/restart` drives this and reports the outcome.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import threading
import time
from typing import Any

# gunicorn's `Arbiter.WORKER_BOOT_ERROR`: a worker exiting with it halts its master.
WORKER_BOOT_ERROR = 3
EXTENSION = "m2fp_drain"  # where the app finds the worker's DrainState


class DrainState:
    """Whether this worker process is draining, and since when."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.started: float | None = None

    @property
    def draining(self) -> bool:
        """Stopping, and saying so for a drain period (with none, M2FP_DRAIN_SECONDS=0, the
        worker just stops accepting: there is no period in which to say it)."""
        return self.started is not None and self.seconds > 0

    def start(self) -> bool:
        """Begin draining; False when it already had."""
        if self.started is not None:
            return False
        self.started = time.monotonic()
        return True


def drain_on_term(worker: Any, seconds: float) -> DrainState:
    """Make `worker` (gunicorn's gthread worker, in `post_worker_init`) drain on SIGTERM, and
    give the app its state (`app.extensions["m2fp_drain"]`)."""
    state = DrainState(seconds)
    worker.wsgi.extensions[EXTENSION] = state

    def stop_accepting() -> None:  # on the worker's main thread (its method queue)
        worker.set_accept_enabled(False)
        for listener in worker.sockets:
            listener.close()  # this process's copy: the socket lives on while others hold it
        worker.alive = False  # gunicorn's own graceful stop: finish in-flight requests, exit
        worker.log.info("drained: not accepting, finishing %d connection(s)", worker.nr_conns)

    def on_term(signum: int, frame: object) -> None:
        if not state.start():
            return
        worker.log.info(
            "draining for %g s: /readyz answers 503 draining, requests are still served",
            seconds,
        )
        timer = threading.Timer(seconds, worker.method_queue.defer, (stop_accepting,))
        timer.daemon = True
        timer.start()

    signal.signal(signal.SIGTERM, on_term)
    return state


class Handoff:
    """The new generation of a USR2 restart: one byte per initial worker in memory shared with
    the master's children (anonymous, nothing on any filesystem); the worker that finds all of
    them set stops the old master."""

    def __init__(self, workers: int, old_master: int) -> None:
        self.workers, self.old_master = workers, old_master
        self._ready = mmap.mmap(-1, workers)

    @classmethod
    def for_this_master(cls, workers: int) -> Handoff | None:
        """In the master's `on_starting`: a Handoff when gunicorn was re-executed by USR2
        (gunicorn passes the old master's pid in GUNICORN_PID), else None."""
        old = os.environ.get("GUNICORN_PID")
        return cls(workers, int(old)) if old else None

    def wait_ready(self, worker: Any, runtime: Any) -> None:
        """In a new worker's `post_worker_init`, before it accepts: wait for its model (the
        heartbeat going on), then count it, or exit with the boot-error status when loading
        failed. Workers started after the handoff (a respawn) do not wait."""
        if "GUNICORN_PID" not in os.environ or worker.age > self.workers:
            return
        while not runtime.wait(1.0):
            worker.notify()
        if not runtime.ready:
            worker.log.error("restart: the model did not load; the old instance keeps serving")
            sys.exit(WORKER_BOOT_ERROR)
        self._ready[worker.age - 1] = 1
        if all(self._ready[:]):
            worker.log.info(
                "restart: %d new worker(s) ready, stopping the old master %d",
                self.workers,
                self.old_master,
            )
            os.kill(self.old_master, signal.SIGTERM)


def reexec_as_started(args: list[str]) -> None:
    """Fix gunicorn's re-exec command line (`[python, argv...]`, in `pre_exec`) for a start
    as `python -m gunicorn`: argv[0] is then gunicorn/__main__.py, and run as a script its
    directory, gunicorn's package with its own `http`, would shadow the standard library's."""
    if len(args) > 1 and args[1].endswith(os.path.join("gunicorn", "__main__.py")):
        args[1:2] = ["-m", "gunicorn"]


__all__ = ["EXTENSION", "DrainState", "Handoff", "drain_on_term", "reexec_as_started"]
