"""The WSGI application: `gunicorn -c gunicorn.conf.py 'app:create_app()'`.

Nothing heavy happens at import time (the gunicorn master imports nothing of the app: no
preload). `create_app` runs in each worker: it reads the settings, wires security and the
API, builds the inference engine and starts loading the model in a background thread.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

import web
from settings import Settings

# Keys of `overrides` that are objects rather than settings.
ENGINE = "engine"  # an InferenceEngine (or anything with its surface), used as is
MODEL = "model"  # an M2FP module: the service builds its InferenceEngine around it


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    """Build the app from the `M2FP_*` environment.

    Args:
        overrides: settings field names → typed values that win over the environment
            (`{"rate_limit": "2 per minute"}`), plus, for tests and embedding, `"engine"`
            (a ready-made engine) or `"model"` (a model to wrap in the service's engine,
            instead of loading M2FP_MODEL_DIR).

    Raises:
        settings.SettingsError: a malformed setting, API keys file or rate-limit storage.
    """
    overrides = dict(overrides or {})
    engine, model = overrides.pop(ENGINE, None), overrides.pop(MODEL, None)
    settings = Settings.from_env(overrides=overrides)
    app = Flask(__name__)
    web.init_app(app, settings, engine=engine, model=model)
    return app
