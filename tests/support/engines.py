"""Engines for the web tests."""

from __future__ import annotations

import threading

from m2fp.engine import InferenceEngine


class SlowStart(InferenceEngine):
    """The real engine, whose start waits for the test to let it go."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.go = threading.Event()

    def start(self):
        self.go.wait(30)
        super().start()
