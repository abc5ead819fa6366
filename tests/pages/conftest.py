"""Fixtures of the browser tests: the tiny-model app served on 127.0.0.1 and headless
Chromium, one of each per module. A module that needs another app (settings of its own) or a
browser with a fake camera overrides `server` or `browser`."""

from __future__ import annotations

import pytest
from playwright.sync_api import sync_playwright

from tests.support.pages import launch, make_app, serve


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with serve(make_app(tiny_model_dir)) as live:
        yield live


@pytest.fixture(scope="module")
def playwright():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    chromium = launch(playwright, camera=False)
    yield chromium
    chromium.close()
