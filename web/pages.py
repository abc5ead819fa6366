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

bp = Blueprint("pages", __name__)

# Seconds the kiosk counts down before it takes the photo.
KIOSK_COUNTDOWN_SECONDS = 3
# On top of the longest the edge waits for the app's answer (itself beyond the engine's
# deadline), time for the upload and the answer: a client waiting this long never gives up on a
# parse the server still finishes.
PARSE_MARGIN_SECONDS = 30


def parse_timeout_seconds(settings: Settings) -> int:
    """The pages' deadline for one parse, from M2FP_LATENCY_TARGET_SECONDS's time limits."""
    return math.ceil(settings.time_limits.proxy_read_timeout_s) + PARSE_MARGIN_SECONDS


PARSE_TIMEOUT_SECONDS = parse_timeout_seconds(Settings())  # with the default target


def _settings() -> Settings:
    return current_app.extensions["m2fp_settings"]


@bp.get("/")
def index() -> str:
    settings = _settings()
    return render_template(
        "index.html",
        max_upload_bytes=settings.max_upload_bytes,
        max_upload_label=size_label(settings.max_upload_bytes),
        parse_timeout_seconds=parse_timeout_seconds(settings),
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
        parse_timeout_seconds=parse_timeout_seconds(settings),
        file_fallback=settings.kiosk_file_fallback,
    )


__all__ = ["KIOSK_COUNTDOWN_SECONDS", "PARSE_TIMEOUT_SECONDS", "bp", "parse_timeout_seconds"]
