"""security.uploads, decoding: EXIF orientation, metadata dropped, modes normalised to RGB,
first frames, the downscaled working copy."""

from __future__ import annotations

import dataclasses
import io
import uuid

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin, PngImagePlugin

from security.uploads import DecodedImage, UploadPolicy, decode_image, load_upload
from tests.support import images as samples

MIMES = ["image/jpeg", "image/png", "image/webp"]
QUADRANTS = [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE]

# ------------------------------------------------------------------------- EXIF orientation

# How each EXIF orientation stores an upright image (EXIF 2.32, tag 0x0112: where row 0 and
# column 0 of the stored image are on screen), written with numpy, independently of Pillow.
STORED = {
    1: lambda up: up,
    2: lambda up: up[:, ::-1],  # mirrored left-right
    3: lambda up: up[::-1, ::-1],  # turned 180 degrees
    4: lambda up: up[::-1, :],  # mirrored top-bottom
    5: lambda up: up.transpose(1, 0, 2),  # mirrored along the main diagonal
    6: lambda up: np.rot90(up, 1),  # stored turned 90 degrees counter-clockwise
    7: lambda up: np.rot90(up, 2).transpose(1, 0, 2),  # mirrored along the anti-diagonal
    8: lambda up: np.rot90(up, -1),  # stored turned 90 degrees clockwise
}


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("mime", ["image/png", "image/webp"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_pixels(mime, orientation):
    upright = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3) * 2  # every pixel unique
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    data = samples.sample(mime, stored, exif=_exif(orientation).tobytes())

    decoded = load_upload(data)

    np.testing.assert_array_equal(decoded.pixels, upright)  # lossless: exact
    assert decoded.original_size == (7, 5)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_of_jpeg(orientation):
    upright = np.asarray(samples.quadrants(64, 48))
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)))
    data = samples.encode(stored, "JPEG", quality=95, exif=_exif(orientation))

    decoded = load_upload(data)

    assert decoded.pixels.shape == (48, 64, 3)
    assert decoded.original_size == (64, 48)
    samples.assert_quadrants(decoded.pixels, QUADRANTS, tol=12)


def test_orientation_with_downscale_and_dct_scaling():
    """A portrait phone photo: stored landscape with orientation 6, decoded at 1/4 scale."""
    upright = np.asarray(samples.quadrants(600, 1000))
    stored = Image.fromarray(np.ascontiguousarray(STORED[6](upright)))
    data = samples.encode(stored, "JPEG", quality=90, exif=_exif(6))

    decoded = load_upload(data, policy=UploadPolicy(max_side=240))

    assert decoded.original_size == (600, 1000)
    assert decoded.pixels.shape == (240, 144, 3)
    samples.assert_quadrants(decoded.pixels, QUADRANTS, tol=12)


# ------------------------------------------------------------------------ metadata dropped


def _metadata_rich(mime: str, canary: str) -> tuple[bytes, bytes]:
    """(image with EXIF incl. GPS, ICC, XMP and text/comments carrying `canary`, same without)"""
    im = samples.noise(32, 24)
    exif = Image.Exif()
    exif[0x010E] = f"description {canary}"  # ImageDescription
    exif[0x013B] = f"artist {canary}"  # Artist
    gps = exif.get_ifd(0x8825)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)})
    gps[0x001B] = f"ASCII\0\0\0{canary}".encode()  # GPSProcessingMethod
    icc = f"not really an ICC profile {canary}".encode()
    xmp = f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><c>{canary}</c></x:xmpmeta>'.encode()
    if mime == "image/png":
        text = PngImagePlugin.PngInfo()
        text.add_text("Comment", canary)
        text.add_text("Author", canary, zip=True)
        text.add_itxt("Description", canary, lang="en")
        params = {"pnginfo": text, "exif": exif, "icc_profile": icc}
    elif mime == "image/jpeg":
        params = {"exif": exif, "icc_profile": icc, "xmp": xmp, "comment": canary, "quality": 95}
    else:
        params = {"exif": exif, "icc_profile": icc, "xmp": xmp, "lossless": True}
    plain = {k: v for k, v in params.items() if k in ("quality", "lossless")}
    return samples.sample(mime, im, **params), samples.sample(mime, im, **plain)


@pytest.mark.parametrize("mime", MIMES)
def test_all_metadata_is_dropped(mime):
    canary = uuid.uuid4().hex
    rich, plain = _metadata_rich(mime, canary)
    assert canary.encode() in rich  # the fixture really carries it

    decoded = load_upload(rich)

    assert {f.name for f in dataclasses.fields(DecodedImage)} == {
        "pixels",
        "mime",
        "original_size",
        "bytes_in",
        "trailer_bytes",  # a count: nothing of the bytes after the image survives
    }
    assert type(decoded.pixels) is np.ndarray and decoded.pixels.dtype == np.uint8
    assert canary.encode() not in decoded.pixels.tobytes()
    assert canary not in repr(decoded)
    # the pixels are exactly those of the same image stored without any metadata
    np.testing.assert_array_equal(decoded.pixels, load_upload(plain).pixels)


# ------------------------------------------------------------------------- modes to RGB


MODES = {
    # name: (bytes, colour at (0, 0), colour at (7, 7), tolerance)
    "palette": (samples.palette_png(False), (0, 0, 0), (200, 30, 40), 0),
    "palette-transparent": (samples.palette_png(True), (255, 255, 255), (200, 30, 40), 0),
    "grey": (samples.encode(Image.new("L", (8, 8), 100), "PNG"), (100,) * 3, (100,) * 3, 0),
    "grey-alpha": (
        samples.encode(Image.new("LA", (8, 8), (0, 0)), "PNG"),
        (255, 255, 255),
        (255, 255, 255),
        0,
    ),
    "rgba-half": (
        samples.encode(Image.new("RGBA", (8, 8), (255, 0, 0, 128)), "PNG"),
        (255, 127, 127),
        (255, 127, 127),
        1,
    ),
    "rgba-webp": (
        samples.encode(Image.new("RGBA", (8, 8), (0, 0, 255, 0)), "WEBP", lossless=True),
        (255, 255, 255),
        (255, 255, 255),
        0,
    ),
    "rgb-trns": (
        samples.encode(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG", transparency=(9, 9, 9)),
        (255, 255, 255),
        (255, 255, 255),
        0,
    ),
    "bilevel": (samples.encode(Image.new("1", (8, 8), 1), "PNG"), (255,) * 3, (255,) * 3, 0),
    "grey-16bit": (samples.png16(8, 8, 0, (40000,)), (156,) * 3, (156,) * 3, 0),
    "rgb-16bit": (samples.png16(8, 8, 2, (65535, 32768, 0)), (255, 128, 0), (255, 128, 0), 0),
    "rgba-16bit": (samples.png16(8, 8, 6, (0, 65535, 0, 0)), (255, 255, 255), (255, 255, 255), 0),
    "cmyk-jpeg": (
        samples.encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95),
        (255, 0, 0),
        (255, 0, 0),
        6,
    ),
    "grey-jpeg": (
        samples.encode(Image.new("L", (8, 8), 60), "JPEG", quality=95),
        (60,) * 3,
        (60,) * 3,
        2,
    ),
}


@pytest.mark.parametrize("name", MODES)
def test_modes_are_normalised_to_rgb(name):
    data, first, last, tol = MODES[name]
    pixels = load_upload(data).pixels
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    np.testing.assert_allclose(pixels[0, 0], first, atol=tol)
    np.testing.assert_allclose(pixels[7, 7], last, atol=tol)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), c) for c in [(200, 0, 0), (0, 0, 200), (0, 200, 0)]]
    params = {"lossless": True} if fmt == "WEBP" else {}
    data = samples.encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)
    assert Image.open(io.BytesIO(data)).n_frames == 3

    pixels = load_upload(data).pixels

    assert (pixels == (200, 0, 0)).all()


def test_pixels_are_a_writeable_array_of_their_own():
    decoded = load_upload(samples.sample("image/png"))
    decoded.pixels[0, 0] = 7  # the caller may work in place
    assert decoded.pixels.flags.c_contiguous and decoded.pixels.flags.owndata


# -------------------------------------------------------------------- working-copy downscale


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((3000, 1000), 1920, (1920, 640)),
        ((1000, 3000), 1920, (640, 1920)),
        ((250, 100), 100, (100, 40)),
        ((1921, 1081), 1920, (1920, 1080)),
        ((640, 480), 1920, (640, 480)),  # never upscaled
        ((5000, 2), 1000, (1000, 1)),  # never below one pixel
    ],
)
@pytest.mark.parametrize("mime", MIMES)
def test_downscale_keeps_aspect_and_caps_the_long_side(size, max_side, expected, mime):
    data = samples.sample(mime, samples.quadrants(*size))

    decoded = load_upload(data, policy=UploadPolicy(max_side=max_side))

    assert decoded.original_size == size
    assert decoded.pixels.shape == (expected[1], expected[0], 3)
    if min(expected) >= 8:
        samples.assert_quadrants(decoded.pixels, QUADRANTS, tol=12)


def test_large_jpeg_is_decoded_at_a_reduced_dct_scale(monkeypatch):
    """4000x3000 with max side 960: libjpeg decodes at 1/4 (1000x750), then Lanczos to 960."""
    data = samples.encode(samples.quadrants(4000, 3000), "JPEG", quality=80)
    decoded_sizes = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def draft(self, mode, size):  # the real draft, watched
        result = real_draft(self, mode, size)
        decoded_sizes.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", draft)

    decoded = decode_image(data, mime="image/jpeg", policy=UploadPolicy(max_side=960))

    assert decoded_sizes == [(1000, 750)]
    assert decoded.original_size == (4000, 3000)
    assert decoded.pixels.shape == (720, 960, 3)
    samples.assert_quadrants(decoded.pixels, QUADRANTS, tol=12)
    # no DCT scaling when it would leave less than max_side
    load_upload(data, policy=UploadPolicy(max_side=2001))
    assert decoded_sizes == [(1000, 750)]
