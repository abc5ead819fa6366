"""API v1: `POST /api/v1/parse`, `GET /api/v1/classes`, `GET /api/v1/openapi.json`.

The parse view reads as the request travels: options → admission (a place in the engine's
queue, held while the upload is read and decoded) → upload → validate and decode (security) →
inference (engine) → render (m2fp) → response.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from m2fp import render
from m2fp.export import result_to_json
from m2fp.labels import class_table
from web.inputs import read_upload
from web.openapi import openapi_document
from web.options import ParseOptions, parse_options
from web.request_record import current_record
from web.service import ParseService, client_alive, yield_to_the_engine

bp = Blueprint("api", __name__, url_prefix="/api/v1")


def _service() -> ParseService:
    return current_app.extensions["m2fp_service"]


@bp.post("/parse")
def parse() -> Response:
    yield_to_the_engine(request.environ)  # refusing and decoding come after the forward
    service, record = _service(), current_record()
    options = parse_options(request.args.to_dict(flat=False), request.accept_mimetypes)
    with service.admit() as place:  # refused here, before the body is read or decoded
        upload = read_upload(request, max_bytes=service.policy.max_bytes)
        record.bytes_in = len(upload.data)
        started = time.perf_counter()
        decoded = service.decode(upload, record.identity)
        record.image_size = decoded.original_size
        decoded_at = time.perf_counter()
        result, queued = service.infer(decoded.pixels, place, client_alive(request.environ))
    record.persons = len(result.persons)
    inferred_at = time.perf_counter()
    response = _render(result, decoded.pixels, options)
    rendered_at = time.perf_counter()
    service.metrics.stage.labels("render").observe(rendered_at - inferred_at)
    if options.output == "json":
        timing = {
            "decode": decoded_at - started,
            "queue": queued,
            "inference": inferred_at - decoded_at,
            "render": rendered_at - inferred_at,
            "total": rendered_at - record.started,
        }
        body = {"request_id": record.request_id, **response, "timing_ms": _ms(timing)}
        out = jsonify(body)
    else:
        out = Response(response, mimetype=options.media_type)
        out.headers["X-Image-Width"] = str(result.width)
        out.headers["X-Image-Height"] = str(result.height)
    out.headers["X-Persons"] = str(len(result.persons))
    out.vary.add("Accept")
    return out


def _render(result: Any, pixels: Any, options: ParseOptions) -> Any:
    """JSON document (dict) or encoded image (bytes) for `options`."""
    if options.output == "json":
        return result_to_json(
            result,
            pixels,
            instances=options.person_masks,
            mask_format=options.mask_format,
            include_overlay=options.include_overlay,
            alpha=options.alpha,
        )
    if options.output == "cutout":
        image = render.cutout(pixels, result.semantic, options.classes or ())
    else:
        image = render.overlay(
            pixels, result.semantic, alpha=options.alpha, classes=options.classes
        )
    return render.encode_image(image, options.format)


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value * 1000.0, 1) for name, value in seconds.items()}


@bp.get("/classes")
def classes() -> Response:
    return jsonify({"classes": class_table()})


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_app))


__all__ = ["bp"]
