"""The app's side of a graceful stop (lifecycle.py): a draining worker's /readyz answers 503
`draining` while parses are still served; gunicorn's re-exec command line works for a start as
`python -m gunicorn`. The drain setting's validation is tests/test_settings.py; the signals
themselves, on real gunicorn, are tests/deploy/test_drain.py."""

from __future__ import annotations

import pytest

import lifecycle
from tests.support import images


def test_readyz_answers_draining_while_parses_are_served(app):
    client = app.test_client()
    assert client.get("/readyz").status_code == 200
    state = lifecycle.DrainState(5)
    app.extensions[lifecycle.EXTENSION] = state
    assert client.get("/readyz").status_code == 200  # installed, not draining yet
    assert state.start() and not state.start()  # a second SIGTERM changes nothing
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["error"]["code"] == "draining"
    assert int(ready.headers["Retry-After"]) >= 1
    parsed = client.post("/api/v1/parse?output=json", data=images.png(), content_type="image/png")
    assert parsed.status_code == 200
    assert "Retry-After" not in parsed.headers


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["/venv/bin/python", "/venv/lib/site-packages/gunicorn/__main__.py", "-c", "g.py"],
            ["/venv/bin/python", "-m", "gunicorn", "-c", "g.py"],
        ),
        (["/venv/bin/python", "/venv/bin/gunicorn", "-c", "g.py"], None),
    ],
)
def test_reexec_runs_gunicorn_the_way_it_was_started(args, expected):
    fixed = list(args)
    lifecycle.reexec_as_started(fixed)
    assert fixed == (expected or args)
