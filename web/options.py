"""Query options of `POST /api/v1/parse`, validated into one frozen object (pure: no Flask).

Unknown parameters, repeated parameters and bad values are 400s naming the parameter, so a typo
(`ouptut=json`) is an error instead of a silently ignored option.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from m2fp.labels import PALETTES_HEX
from m2fp.labelsets import CIHP, LABEL_SETS, LabelSet
from security.errors import BadRequest

OUTPUTS = ("overlay", "json", "cutout", "matte", "psd")
SIZES = ("working", "original")
PSD_MEDIA_TYPE = "image/vnd.adobe.photoshop"
IMAGE_FORMATS = ("png", "webp")
MASK_FORMATS = ("rle", "png")
PARAMETERS = (
    "output",
    "format",
    "alpha",
    "person_masks",
    "instances",  # the former name of person_masks, still accepted
    "mask_format",
    "include_overlay",
    "classes",
    "person",
    "size",
    "labels",
    "palette",
)
PALETTES = tuple(PALETTES_HEX)  # cihp (the model's own colours), cvd (colour-blind safe)
DEFAULT_ALPHA = 0.6
_TRUE = ("true", "1", "yes")
_FALSE = ("false", "0", "no")


@dataclass(frozen=True)
class ParseOptions:
    output: str = "json"  # overlay | json | cutout | matte | psd
    format: str = "png"  # png | webp, for overlay, cutout and matte
    alpha: float = DEFAULT_ALPHA
    person_masks: bool = True  # each person's mask in the JSON
    mask_format: str = "rle"
    include_overlay: bool = False
    # ids of `labels`; None: every class (overlay). A cutout or matte always has its classes:
    # all parts by default, every class (the whole person's mask) with `person`.
    classes: tuple[int, ...] | None = None
    person: int | None = None  # 1..N: only this person (cutout, matte)
    size: str = "working"  # working | original: the size every output is at
    labels: LabelSet = CIHP  # the label set of ids, keys, names, colours and the label map

    @property
    def media_type(self) -> str:
        if self.output == "json":
            return "application/json"
        return PSD_MEDIA_TYPE if self.output == "psd" else f"image/{self.format}"


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
    if "person_masks" in values and "instances" in values:
        raise BadRequest("Give person_masks or its former name instances, not both.")
    masks_name = "instances" if "instances" in values else "person_masks"
    labels = LABEL_SETS[_choice("labels", values.get("labels", "cihp"), tuple(LABEL_SETS))]
    labels = labels.with_palette(_choice("palette", values.get("palette", "cihp"), PALETTES))
    classes = _classes(values["classes"], labels) if "classes" in values else None
    person = _person(values["person"]) if "person" in values else None
    if output not in ("cutout", "matte"):
        person = None  # like `format` for JSON: it only matters for a cutout or a matte
    if output in ("cutout", "matte") and classes is None:
        # every part of every person; with `person`, that person's whole mask
        classes = tuple(range(0 if person else 1, len(labels)))
    return ParseOptions(
        output=output,
        format=fmt,
        alpha=_alpha(values["alpha"]) if "alpha" in values else DEFAULT_ALPHA,
        person_masks=_flag(masks_name, values.get(masks_name), True),
        mask_format=_choice("mask_format", values.get("mask_format", "rle"), MASK_FORMATS),
        include_overlay=_flag("include_overlay", values.get("include_overlay"), False),
        classes=classes,
        person=person,
        size=_choice("size", values.get("size", "working"), SIZES),
        labels=labels,
    )


def legend_labels(query: Mapping[str, Sequence[str]]) -> LabelSet:
    """The label set `GET /api/v1/classes` lists, in its palette: its optional parameters,
    `labels` and `palette`. Other parameters are ignored, as before those existed (v1
    compatibility).

    Raises:
        BadRequest: a parameter repeated, or an unknown set or palette.
    """
    chosen = {}
    for name, default, allowed in (
        ("labels", "cihp", tuple(LABEL_SETS)),
        ("palette", "cihp", PALETTES),
    ):
        given = query.get(name, [default])
        if len(given) != 1:
            raise BadRequest(f"Query parameter {name!r} is given {len(given)} times.")
        chosen[name] = _choice(name, given[0].strip(), allowed)
    return LABEL_SETS[chosen["labels"]].with_palette(chosen["palette"])


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


def _person(value: str) -> int:
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 10_000:
        raise BadRequest(f"person must be a person id (1, 2, ...), not {value[:40]!r}.")
    return int(value)


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


__all__ = [
    "OUTPUTS",
    "PARAMETERS",
    "PSD_MEDIA_TYPE",
    "SIZES",
    "ParseOptions",
    "legend_labels",
    "negotiate",
    "parse_options",
]
