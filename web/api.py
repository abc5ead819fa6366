"""API v1: `POST /api/v1/parse`, `GET /api/v1/classes`, `GET /api/v1/openapi.json`.

The parse view reads as the request travels: options → admission (a place in the engine's
queue, held while the upload is read and decoded) → upload → validate and decode (security) →
inference (engine) → render (m2fp) → response.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from m2fp import layers, render
from m2fp.export import result_to_json
from web.inputs import read_upload
from web.openapi import openapi_document
from web.options import ParseOptions, legend_labels, parse_options
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
        decoded = service.decode(upload, record.identity, full_size=options.size == "original")
        record.image_size = decoded.original_size
        record.trailer_bytes = decoded.trailer_bytes
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
    labels = options.labels
    if options.output == "json":
        return result_to_json(
            result,
            pixels,
            instances=options.person_masks,
            mask_format=options.mask_format,
            include_overlay=options.include_overlay,
            alpha=options.alpha,
            labels=labels,
        )
    semantic = labels.remap(result.semantic)
    if options.output == "psd":
        stack = layers.layer_stack(
            pixels, semantic, [p.mask for p in result.persons], labels=labels
        )
        return layers.layered_psd(stack, width=result.width, height=result.height)
    within = _person_mask(result, options.person)
    if options.output == "matte":
        image = render.matte(semantic, options.classes or (), labels=labels, within=within)
    elif options.output == "cutout":
        image = render.cutout(pixels, semantic, options.classes or (), labels=labels, within=within)
    else:
        image = render.overlay(
            pixels, semantic, alpha=options.alpha, classes=options.classes, labels=labels
        )
    return render.encode_image(image, options.format)


def _person_mask(result: Any, person: int | None) -> Any:
    """Person `person`'s mask, None for everyone. A person the image does not have (the
    client cannot know how many there are before asking) has an empty mask: an empty cutout or
    matte, with `X-Persons` saying how many there are."""
    if person is None:
        return None
    if person > len(result.persons):
        return np.zeros((result.height, result.width), dtype=bool)
    return result.persons[person - 1].mask


def _ms(seconds: dict[str, float]) -> dict[str, float]:
    return {name: round(value * 1000.0, 1) for name, value in seconds.items()}


@bp.get("/classes")
def classes() -> Response:
    labels = legend_labels(request.args.to_dict(flat=False))
    return jsonify({"classes": labels.table()})


@bp.get("/openapi.json")
def openapi() -> Response:
    return jsonify(openapi_document(current_app))


__all__ = ["bp"]
