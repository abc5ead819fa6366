"""The compose files as compose reads them (the CPU override's `!reset` tags included)."""

from __future__ import annotations

import yaml

from tests.support.paths import REPO


def compose() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!reset", lambda loader, node: None)
    with open(REPO / "docker-compose.yml") as f:
        base = yaml.load(f, Loader)
    with open(REPO / "docker-compose.cpu.yml") as f:
        cpu = yaml.load(f, Loader)
    return {"base": base, "cpu": cpu}
