"""security.uploads and data after the image: phone photos with a video or
a trailer after the image are accepted by decoding only the image; the trailing bytes reach no
decoder; an operator can keep the strict refusal; whatever is not a well-formed image at its
start is still refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from security.errors import UnprocessableImage, UnsupportedMediaType
from security.uploads import UploadPolicy, check_upload, decode_image, load_upload
from settings import Settings
from tests.support import images as samples
from tests.support.images import spy_on_the_decoder

QUADRANTS = [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE]
STRICT = UploadPolicy(allow_trailing_data=False)


def _plus(mime: str, trailer: bytes) -> tuple[bytes, int]:
    return samples.sample(mime) + trailer, len(trailer)


def _phone_files() -> dict[str, tuple[bytes, int]]:
    """name → (upload, bytes after the image)."""
    still = len(samples.sample("image/jpeg"))
    google, samsung = samples.motion_photo("google"), samples.motion_photo("samsung")
    hdr = samples.ultra_hdr()
    return {
        "google-motion-photo": (google, len(google) - still),
        "samsung-motion-photo": (samsung, len(samsung) - still),
        "ultra-hdr-motion-photo": (hdr + samples.MP4_VIDEO, len(samples.MP4_VIDEO)),
        "jpeg+zip": _plus("image/jpeg", samples.zip_archive()),
        "png+php": _plus("image/png", b"<?php system($_GET['c']); ?>\n"),
        "webp+junk": _plus("image/webp", b"\x00\x00x"),
    }


PHONE_FILES = _phone_files()


@pytest.fixture
def decoder_inputs(monkeypatch) -> list[bytes]:
    return spy_on_the_decoder(monkeypatch)


@pytest.mark.parametrize("name", PHONE_FILES)
def test_an_image_followed_by_other_bytes_is_decoded_alone(name, decoder_inputs):
    data, trailer = PHONE_FILES[name]
    image = data[: len(data) - trailer]
    mime = check_upload(data)
    decoded = load_upload(data, filename=f"photo.{samples.EXTENSIONS[mime]}")
    assert decoded.trailer_bytes == trailer
    assert decoded.bytes_in == len(data)
    assert decoded.original_size == (64, 48)
    samples.assert_quadrants(decoded.pixels, QUADRANTS, 12 if mime == "image/jpeg" else 0)
    assert decoder_inputs == [image]  # the trailer never reached the decoder
    alone = decode_image(data, mime=mime)  # decode_image walks and cuts the same way
    assert alone.trailer_bytes == trailer and decoder_inputs[-1] == image


def test_a_png_with_a_stray_byte_after_iend_is_accepted(decoder_inputs):
    data = samples.png_with_stray_byte(b"\n")
    decoded = load_upload(data, declared_type="image/png", filename="tRNS_null_1x1.png")
    assert decoded.original_size == (1, 1) and decoded.trailer_bytes == 1
    assert decoder_inputs == [data[:-1]]


def test_ultra_hdr_parses_and_its_primary_image_is_decoded(decoder_inputs):
    data = samples.ultra_hdr()
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO" and im.n_frames == 2  # Pillow sees primary + gain map
    decoder_inputs.clear()
    decoded = load_upload(data, declared_type="image/jpeg", filename="PXL_20260101.jpg")
    assert decoded.trailer_bytes == 0  # the gain map is part of the image (its MPF index)
    assert decoded.original_size == (64, 48)
    samples.assert_quadrants(decoded.pixels, QUADRANTS, 12)  # not the grey gain map


@pytest.mark.parametrize("name", PHONE_FILES)
def test_the_strict_policy_keeps_refusing_data_after_the_image(name, decoder_inputs):
    data, trailer = PHONE_FILES[name]
    mime = check_upload(data)
    for call in (
        lambda: check_upload(data, policy=STRICT),
        lambda: load_upload(data, policy=STRICT),
        lambda: decode_image(data, mime=mime, policy=STRICT),
    ):
        with pytest.raises(UnsupportedMediaType, match=f"followed by {trailer} more bytes"):
            call()
    assert decoder_inputs == []


def test_zero_padding_is_accepted_either_way_and_counted():
    for policy in (UploadPolicy(), STRICT):
        decoded = load_upload(samples.sample("image/png") + bytes(100), policy=policy)
        assert decoded.trailer_bytes == 100


@pytest.mark.parametrize(
    "data",
    [
        samples.HTML + samples.sample("image/jpeg"),
        b"<script>alert(1)</script>" + samples.sample("image/png"),
        samples.zip_archive() + samples.sample("image/jpeg"),
        samples.NOT_IMAGES["pdf"] + samples.sample("image/png"),
        samples.encode(samples.quadrants(), "GIF") + samples.sample("image/jpeg"),
        samples.MP4_VIDEO + samples.sample("image/jpeg"),
    ],
    ids=["html-jpeg", "script-png", "zip-jpeg", "pdf-png", "gif-jpeg", "mp4-jpeg"],
)
def test_another_format_first_is_still_refused(data, decoder_inputs):
    with pytest.raises(UnsupportedMediaType):
        load_upload(data)
    assert decoder_inputs == []


def test_a_broken_image_followed_by_a_video_is_still_unprocessable(decoder_inputs):
    data = samples.sample("image/png", samples.noise())
    cut = data[: len(data) // 2]  # IEND never comes: the video is read as chunks
    with pytest.raises(UnprocessableImage):
        load_upload(cut + samples.MP4_VIDEO)
    assert decoder_inputs == []


def test_the_setting():
    assert Settings.from_env({}).allow_trailing_data is True
    assert UploadPolicy.from_settings(Settings.from_env({})).allow_trailing_data is True
    strict = Settings.from_env({"M2FP_ALLOW_TRAILING_DATA": "false"})
    assert UploadPolicy.from_settings(strict) == UploadPolicy(allow_trailing_data=False)
    with pytest.raises(ValueError, match="allow_trailing_data"):
        UploadPolicy(allow_trailing_data="no")
