"""Draw the sample photo the drag-and-drop page offers (`static/samples/sample-photo.jpg`).

The picture is generated, not photographed: three made-up figures (hair, face, clothes, arms,
legs, shoes) in front of a sky, a lawn and a sign whose text shows which way round it is. Nobody
is in it and nothing was downloaded, so it is free of rights: CC0 (public domain dedication).

    .venv/bin/python scripts/make_sample_photo.py [OUTPUT]

The output is byte-for-byte the same on every run (no randomness, fixed JPEG settings).
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 1200, 900
OUTPUT = Path(__file__).resolve().parent.parent / "static" / "samples" / "sample-photo.jpg"

# (centre x, height scale, skin, hair, top, bottom, shoes): one row per figure.
FIGURES = (
    (0.24, 0.95, (233, 189, 160), (60, 40, 30), (200, 60, 60), (40, 50, 90), (30, 30, 30)),
    (0.52, 1.05, (170, 120, 90), (25, 20, 20), (240, 200, 60), (70, 70, 75), (240, 240, 240)),
    (0.79, 0.90, (250, 215, 190), (190, 140, 70), (60, 140, 110), (120, 80, 50), (110, 60, 40)),
)


def background(draw: ImageDraw.ImageDraw) -> None:
    horizon = int(HEIGHT * 0.62)
    for y in range(horizon):
        t = y / horizon
        draw.line([(0, y), (WIDTH, y)], fill=(int(120 + 90 * t), int(170 + 60 * t), 235))
    for y in range(horizon, HEIGHT):
        t = (y - horizon) / (HEIGHT - horizon)
        draw.line([(0, y), (WIDTH, y)], fill=(int(70 + 30 * t), int(140 - 30 * t), 60))
    # A sign on the lawn: its text reads the right way round only if the picture is not mirrored.
    draw.rectangle([1060, 120, 1075, 600], fill=(90, 70, 50))
    draw.rectangle([930, 50, 1180, 130], fill=(250, 250, 245), outline=(40, 40, 40), width=4)
    draw.text((950, 70), "SAMPLE ->", fill=(20, 20, 20), font_size=36)


def figure(draw: ImageDraw.ImageDraw, cx: float, scale: float, colours: tuple) -> None:
    skin, hair, top, bottom, shoes = colours
    x = cx * WIDTH
    unit = HEIGHT * 0.09 * scale
    feet = HEIGHT * 0.93
    hip = feet - 3.6 * unit
    shoulder = hip - 2.8 * unit
    head = shoulder - 0.35 * unit
    # legs and shoes
    for side in (-1, 1):
        lx = x + side * 0.45 * unit
        draw.rounded_rectangle(
            [lx - 0.38 * unit, hip, lx + 0.38 * unit, feet - 0.3 * unit], 10, fill=bottom
        )
        draw.ellipse(
            [lx - 0.55 * unit + side * 0.2 * unit, feet - 0.45 * unit,
             lx + 0.55 * unit + side * 0.2 * unit, feet + 0.05 * unit],
            fill=shoes,
        )  # fmt: skip
    # arms (skin below a short sleeve)
    for side in (-1, 1):
        ax = x + side * 1.25 * unit
        draw.rounded_rectangle(
            [ax - 0.27 * unit, shoulder + 0.1 * unit, ax + 0.27 * unit, hip + 0.6 * unit],
            12,
            fill=skin,
        )
        draw.rounded_rectangle(
            [ax - 0.32 * unit, shoulder, ax + 0.32 * unit, shoulder + 0.9 * unit], 12, fill=top
        )
    # torso
    draw.rounded_rectangle(
        [x - 1.0 * unit, shoulder, x + 1.0 * unit, hip + 0.2 * unit], 18, fill=top
    )
    # neck, face, hair
    draw.rectangle([x - 0.2 * unit, head - 0.2 * unit, x + 0.2 * unit, shoulder + 0.1 * unit],
                   fill=skin)  # fmt: skip
    draw.ellipse([x - 0.62 * unit, head - 1.5 * unit, x + 0.62 * unit, head], fill=skin)
    draw.chord(
        [x - 0.68 * unit, head - 1.62 * unit, x + 0.68 * unit, head - 0.5 * unit], 180, 360,
        fill=hair,
    )  # fmt: skip
    for side in (-1, 1):
        ex = x + side * 0.22 * unit
        draw.ellipse([ex - 0.06 * unit, head - 0.85 * unit, ex + 0.06 * unit, head - 0.73 * unit],
                     fill=(30, 30, 30))  # fmt: skip


def make() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    draw = ImageDraw.Draw(image)
    background(draw)
    for cx, scale, *colours in FIGURES:
        figure(draw, cx, scale, tuple(colours))
    return image.filter(ImageFilter.SMOOTH)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    make().save(out, "JPEG", quality=85, optimize=True)
    print(f"{out}: {out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
