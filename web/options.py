"""Query options of `POST /api/v1/parse`, validated into one frozen object (pure: no Flask).

Unknown parameters, repeated parameters and bad values are 400s naming the parameter, so a typo
(`ouptut=json`) is an error instead of a silently ignored option.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from m2fp.labelsets import CIHP, LabelSet
from security.errors import BadRequest

OUTPUTS = ("overlay", "json", "cutout")
IMAGE_FORMATS = ("png", "webp")
MASK_FORMATS = ("rle", "png")
PARAMETERS = (
    "output",
    "format",
    "alpha",
    "instances",
    "mask_format",
    "include_overlay",
    "classes",
)
DEFAULT_ALPHA = 0.6
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class ParseOptions:
    output: str = "json"  # overlay | json | cutout
    format: str = "png"  # png | webp, for overlay and cutout
    alpha: float = DEFAULT_ALPHA
    instances: bool = True
    mask_format: str = "rle"
    include_overlay: bool = False
    classes: tuple[int, ...] | None = None  # None: every class (overlay), all parts (cutout)

    @property
    def media_type(self) -> str:
        return "application/json" if self.output == "json" else f"image/{self.format}"


def negotiate(accept: Iterable[tuple[str, float]]) -> tuple[str, str]:
    """(output, format) when the client names none: the first acceptable of the client's
    preferences (highest quality first, then the client's order). `image/png` or `image/*`
    → overlay PNG, `image/webp` → overlay WebP, JSON or anything else → JSON."""
    for media, quality in accept:
        if quality <= 0:
            continue
        media = media.lower()
        if media in ("image/png", "image/*"):
            return "overlay", "png"
        if media == "image/webp":
            return "overlay", "webp"
        if media in ("application/json", "application/*", "*/*"):
            return "json", "png"
    return "json", "png"


def parse_options(
    query: Mapping[str, Sequence[str]], accept: Iterable[tuple[str, float]] = ()
) -> ParseOptions:
    """Validate the query (name → all its values) into `ParseOptions`.

    Raises:
        BadRequest: unknown or repeated parameter, or a value out of range.
    """
    unknown = sorted(set(query) - set(PARAMETERS))
    if unknown:
        raise BadRequest(f"Unknown query parameter {unknown[0]!r}; known: {', '.join(PARAMETERS)}.")
    values: dict[str, str] = {}
    for name, given in query.items():
        if len(given) != 1:
            raise BadRequest(f"Query parameter {name!r} is given {len(given)} times.")
        values[name] = given[0].strip()

    output, fmt = negotiate(accept)
    if "output" in values:
        output = _choice("output", values["output"], OUTPUTS)
    if "format" in values:
        fmt = _choice("format", values["format"], IMAGE_FORMATS)
    labels = CIHP
    classes = _classes(values["classes"], labels) if "classes" in values else None
    if output == "cutout" and classes is None:
        classes = tuple(range(1, len(labels)))  # every part of every person
    return ParseOptions(
        output=output,
        format=fmt,
        alpha=_alpha(values["alpha"]) if "alpha" in values else DEFAULT_ALPHA,
        instances=_flag("instances", values.get("instances"), True),
        mask_format=_choice("mask_format", values.get("mask_format", "rle"), MASK_FORMATS),
        include_overlay=_flag("include_overlay", values.get("include_overlay"), False),
        classes=classes,
    )


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value.lower() not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, not {value[:40]!r}.")
    return value.lower()


def _flag(name: str, value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, not {value[:40]!r}.")


def _alpha(value: str) -> float:
    try:
        alpha = float(value)
    except ValueError:
        alpha = float("nan")
    if not 0.0 <= alpha <= 1.0:  # also rejects nan
        raise BadRequest(f"alpha must be a number from 0 to 1, not {value[:40]!r}.")
    return alpha


def _classes(value: str, labels: LabelSet) -> tuple[int, ...]:
    """Comma-separated ids or keys (`2,upper_clothes`) of `labels` → ids, first mention order."""
    ids: list[int] = []
    for part in value.split(","):
        try:
            class_id = labels.class_id(part)
        except KeyError:
            raise BadRequest(
                f"classes must be comma-separated class ids from 0 to {len(labels) - 1} or"
                f" keys such as {labels.keys[2]} (see GET /api/v1/classes), not"
                f" {part.strip()[:40]!r}."
            ) from None
        if class_id not in ids:
            ids.append(class_id)
    return tuple(ids)


__all__ = ["OUTPUTS", "PARAMETERS", "ParseOptions", "negotiate", "parse_options"]
