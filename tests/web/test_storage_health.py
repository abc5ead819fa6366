"""`security.abuse.StorageHealth`: the rate-limit storage's state as the operator sees it, one
log line per change, and the gauge it drives. The outage itself, on real Redis and gunicorn,
is tests/deploy/test_storage_outage.py."""

from __future__ import annotations

import logging

from security.abuse import StorageHealth


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_only_changes_are_logged_and_reported():
    changes: list[bool] = []
    health = StorageHealth(changes.append)
    assert health.up and changes == [True]
    logger, seen = logging.getLogger("security.abuse"), Records()
    logger.addHandler(seen)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        for _ in range(3):
            health.failed(ConnectionError("redis://secret@host"))
        health.failed(None)
        assert not health.up
        for _ in range(3):
            health.answered()
    finally:
        logger.removeHandler(seen)
        logger.setLevel(level)
    assert health.up and changes == [True, False, True]
    messages = [record.getMessage() for record in seen.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith("rate-limit storage unreachable (ConnectionError)")
    assert "secret" not in messages[0]  # the error's type, never its text (URLs, passwords)
    assert messages[1].startswith("rate-limit storage reachable again after")
    assert [record.levelname for record in seen.records] == ["ERROR", "WARNING"]


def test_the_gauge_follows_the_storage(make_app):
    app = make_app(rate_limit="1000 per minute")
    health = app.extensions["m2fp_abuse"].health
    client = app.test_client()

    metrics = app.extensions["m2fp_service"].metrics

    def gauge() -> float:
        # as set, without the scrape's own refresh (its readiness check uses the storage too)
        return metrics.instance_value("m2fp_ratelimit_storage_up")

    def scraped() -> str:
        text = client.get("/metrics").get_data(as_text=True)
        return next(line for line in text.splitlines() if line.startswith("m2fp_ratelimit_"))

    assert scraped() == "m2fp_ratelimit_storage_up 1.0"
    health.failed(None)
    assert gauge() == 0.0
    assert client.get("/readyz").status_code == 200  # memory:// answers: recovered
    assert gauge() == 1.0
    assert scraped() == "m2fp_ratelimit_storage_up 1.0"
