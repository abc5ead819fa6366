"""The two HTML pages: `/` (drop, paste or pick a photo) and `/kiosk` (camera, countdown, result).

Both are static shells: their scripts (`static/js/*.js`, ES modules) do the work in the browser
and talk to `POST /api/v1/parse`. Settings the scripts need reach them as `data-*` attributes
on `<body>`, never as inline script, so the strict CSP holds. No route here sees an upload.
"""

from __future__ import annotations

import json
import math

from flask import Blueprint, current_app, render_template

from http_contract import size_label
from m2fp.labels import PALETTES_HEX
from settings import Settings
from web.service import ENGINE_TIMEOUT_S

bp = Blueprint("pages", __name__)

# Seconds the kiosk counts down before it takes the photo.
KIOSK_COUNTDOWN_SECONDS = 3
# On top of the engine's own deadline (queue + inference), time for the upload, the decode and
# the answer: a client waiting this long never gives up on a parse the server still finishes.
PARSE_MARGIN_SECONDS = 30
PARSE_TIMEOUT_SECONDS = math.ceil(ENGINE_TIMEOUT_S) + PARSE_MARGIN_SECONDS


def _settings() -> Settings:
    return current_app.extensions["m2fp_settings"]


@bp.get("/")
def index() -> str:
    settings = _settings()
    return render_template(
        "index.html",
        max_upload_bytes=settings.max_upload_bytes,
        max_upload_label=size_label(settings.max_upload_bytes),
        parse_timeout_seconds=PARSE_TIMEOUT_SECONDS,
        palettes=json.dumps(PALETTES_HEX, separators=(",", ":")),
    )


@bp.get("/kiosk")
def kiosk() -> str:
    settings = _settings()
    return render_template(
        "kiosk.html",
        max_upload_bytes=settings.max_upload_bytes,
        idle_seconds=settings.kiosk_idle_seconds,
        countdown_seconds=KIOSK_COUNTDOWN_SECONDS,
        notice=settings.kiosk_notice,
        parse_timeout_seconds=PARSE_TIMEOUT_SECONDS,
        file_fallback=settings.kiosk_file_fallback,
    )


__all__ = ["KIOSK_COUNTDOWN_SECONDS", "PARSE_TIMEOUT_SECONDS", "bp"]
