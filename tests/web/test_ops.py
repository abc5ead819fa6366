"""web/ops.py: the instance's readiness, workers ready / total as metrics, and a worker whose
model is loading kept off the port while another answers."""

from __future__ import annotations

import threading
import time

from tests.support.engines import SlowStart
from tests.support.model_factory import make_tiny_model
from web.overload import MemoryReading


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
