"""Fixtures shared by every test module: tiny model directories made by the tests, apps built
by `create_app` around a tiny real model, and the bubblewrap namespace of the disk watches."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Two cores on CI: keep torch from oversubscribing them when tests run servers beside it.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from flask import Flask  # noqa: E402

from tests.support.namespace import namespace  # noqa: E402, F401  (a fixture)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ModelScope-style model directory (configuration.json + pytorch_model.pt) holding a
    tiny M2FP with seeded random weights, confident enough to find parts and persons."""
    from tests.support.model_factory import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"), seed=0)


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    from tests.support.model_factory import make_tiny_model

    return make_tiny_model(seed=0)


@pytest.fixture
def make_app(tiny_model: Any) -> Iterator[Callable[..., Flask]]:
    """`make_app(**overrides)`: `create_app` with the tiny model (the service's own
    InferenceEngine around it), no warm-up, waiting until the model is loaded."""
    from app import create_app

    apps: list[Flask] = []

    def factory(wait: bool = True, **overrides: Any) -> Flask:
        if "engine" not in overrides and "model_dir" not in overrides:
            overrides.setdefault("model", tiny_model)
        overrides.setdefault("warmup", False)
        app = create_app(overrides)
        apps.append(app)
        if wait:
            assert app.extensions["m2fp_service"].runtime.wait(60), "model load timed out"
        return app

    yield factory
    for app in apps:
        app.extensions["m2fp"].close()


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(rate_limit="1000 per minute")


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A development CA and server certificate for 127.0.0.1/localhost (scripts/dev-cert)."""
    from tests.support.edge import make_dev_cert

    return make_dev_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[Any]:
    """A small real HTTP server on 127.0.0.1 that answers with what nginx forwarded to it."""
    from tests.support.edge import echo_upstream

    with echo_upstream() as server:
        yield server
