"""The two HTML pages: `/` (drop, paste or pick a photo) and `/kiosk` (camera booth).

The templates live in `templates/`, their scripts and styles in `static/` (the CSP allows no
inline code). The kiosk settings are passed to the kiosk template.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.get("/kiosk")
def kiosk() -> str:
    settings = current_app.extensions["m2fp_settings"]
    return render_template(
        "kiosk.html",
        idle_seconds=settings.kiosk_idle_seconds,
        notice=settings.kiosk_notice,
    )


__all__ = ["bp"]
