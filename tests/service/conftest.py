"""Fixtures of the service tests: apps built by `create_app` around a tiny real model."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from app import create_app


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    from tests.model_factory import make_tiny_model

    return make_tiny_model(seed=0)


@pytest.fixture
def make_app(tiny_model: Any) -> Iterator[Callable[..., Flask]]:
    """`make_app(**overrides)`: `create_app` with the tiny model (the service's own
    InferenceEngine around it), no warm-up, waiting until the model is loaded."""
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
