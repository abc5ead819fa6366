"""Who can reach the app's port by default: the edge only. scripts/run binds gunicorn to
loopback; in compose the app and Redis sit on an internal network that publishes nothing."""

from __future__ import annotations

import re

from tests.support.compose import compose
from tests.support.paths import REPO


def test_compose_publishes_only_the_edge_and_keeps_the_app_on_an_internal_network():
    base = compose()["base"]
    services, networks = base["services"], base["networks"]
    assert [name for name, s in services.items() if "ports" in s] == ["edge"]
    for name in ("app", "redis"):
        assert services[name]["networks"] == ["internal"], name
    assert networks["internal"]["internal"] is True
    assert set(services["edge"]["networks"]) == {"public", "internal"}
    assert not networks["public"] or not networks["public"].get("internal")


def test_the_run_script_binds_the_app_to_loopback_only():
    script = (REPO / "scripts" / "run").read_text()
    binds = re.findall(r"gunicorn\" -c gunicorn.conf.py -b \"([^\"]+)\"", script)
    assert binds == ["127.0.0.1:$APP_PORT"]
