"""security.uploads, the checks before decoding: types and claims (415), structure (415/422),
appended data (dropped undecoded; 415 under the strict policy), byte and pixel caps (413),
empty bodies (400)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
import uuid

import numpy as np
import pytest
from PIL import Image

from security.errors import (
    BadRequest,
    PayloadTooLarge,
    UnprocessableImage,
    UnsupportedMediaType,
)
from security.uploads import (
    ALLOWED_MIMES,
    UploadPolicy,
    check_upload,
    decode_image,
    load_upload,
    sniff_mime,
)
from settings import Settings
from tests.support import images as samples
from tests.support.images import spy_on_the_decoder
from tests.support.paths import REPO

MIMES = list(ALLOWED_MIMES)


# ---------------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("mime", MIMES)
@pytest.mark.parametrize(
    "declared, name",
    [
        (None, None),
        ("{mime}", None),
        (None, "photo.{ext}"),
        ("{mime}; charset=binary", "C:\\Users\\me\\Pictures\\photo.{EXT}"),
        ("application/octet-stream", "blob"),
        ("", ""),
    ],
)
def test_allowed_types_are_accepted_with_or_without_claims(mime, declared, name):
    ext = samples.EXTENSIONS[mime]
    declared = declared and declared.format(mime=mime)
    name = name and name.format(ext=ext, EXT=ext.upper())
    data = samples.sample(mime)

    assert check_upload(data, declared_type=declared, filename=name) == mime
    decoded = load_upload(data, declared_type=declared, filename=name)
    assert decoded.mime == mime
    assert decoded.pixels.shape == (48, 64, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.original_size == (64, 48)
    assert decoded.bytes_in == len(data)
    tol = 12 if mime == "image/jpeg" else 0
    samples.assert_quadrants(
        decoded.pixels, [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE], tol
    )


@pytest.mark.parametrize(
    "declared, name",
    [("image/jpg", "x.jpeg"), ("IMAGE/JPEG", "x.jfif"), ("image/jpeg", "x.JPG")],
)
def test_jpeg_aliases_agree(declared, name):
    data = samples.sample("image/jpeg")
    assert check_upload(data, declared_type=declared, filename=name) == "image/jpeg"


def test_lossy_webp_and_zero_padding_are_accepted():
    lossy = samples.sample("image/webp", lossless=False)
    assert load_upload(lossy).pixels.shape == (48, 64, 3)
    for mime in MIMES:
        padded = samples.sample(mime) + b"\x00" * 1000
        assert check_upload(padded) == mime


def test_sniff_names_what_libmagic_sees():
    assert sniff_mime(samples.sample("image/png")) == "image/png"
    assert sniff_mime(samples.NOT_IMAGES["svg"]) == "image/svg+xml"
    assert sniff_mime(b"") == "application/x-empty"


# ---------------------------------------------------------------------- refused types (415)


@pytest.mark.parametrize("kind", sorted(samples.other_formats()))
@pytest.mark.parametrize(
    "declared, name", [(None, None), ("image/jpeg", "photo.jpg"), ("image/png", "photo.png")]
)
def test_other_types_are_refused_whatever_they_claim(kind, declared, name):
    data = samples.other_formats()[kind]
    with pytest.raises(UnsupportedMediaType) as caught:
        load_upload(data, declared_type=declared, filename=name)
    assert caught.value.status == 415
    assert "only JPEG, PNG and WebP" in caught.value.message
    assert sniff_mime(data) in caught.value.message  # what was found


def test_svg_is_refused_even_declared_as_svg():
    with pytest.raises(UnsupportedMediaType, match="image/svg\\+xml"):
        check_upload(samples.NOT_IMAGES["svg"], declared_type="image/svg+xml", filename="a.svg")


STRICT = UploadPolicy(allow_trailing_data=False)


@pytest.mark.parametrize("mime", MIMES)
def test_appended_payloads_are_dropped_undecoded_or_refused_by_the_strict_policy(mime, monkeypatch):
    image = samples.sample(mime)
    seen = spy_on_the_decoder(monkeypatch)
    for payload in (samples.zip_archive(), b"<?php system($_GET['c']); ?>\n", b"\x00\x00x"):
        assert load_upload(image + payload).trailer_bytes == len(payload)
        assert decode_image(image + payload, mime=mime).trailer_bytes == len(payload)
        with pytest.raises(UnsupportedMediaType, match="followed by .* more bytes"):
            load_upload(image + payload, policy=STRICT)
        with pytest.raises(UnsupportedMediaType):  # decode_image alone walks the file too
            decode_image(image + payload, mime=mime, policy=STRICT)
    assert seen == [image] * 6  # only the image ever reached the decoder


def test_jpeg_zip_polyglot_reaches_no_decoder_though_libmagic_and_pillow_accept_it(monkeypatch):
    image = samples.sample("image/jpeg")
    polyglot = image + samples.zip_archive()
    assert sniff_mime(polyglot) == "image/jpeg"
    Image.open(io.BytesIO(polyglot)).load()  # Pillow decodes it happily
    seen = spy_on_the_decoder(monkeypatch)
    decoded = load_upload(polyglot, declared_type="image/jpeg", filename="cat.jpg")
    assert seen == [image] and decoded.trailer_bytes == len(polyglot) - len(image)
    with pytest.raises(UnsupportedMediaType):
        check_upload(polyglot, declared_type="image/jpeg", filename="cat.jpg", policy=STRICT)


def test_png_with_php_after_iend_reaches_no_decoder(monkeypatch):
    image, php = samples.sample("image/png"), b"<?php echo shell_exec($_GET['cmd']); ?>"
    data = image + php
    assert sniff_mime(data) == "image/png"
    seen = spy_on_the_decoder(monkeypatch)
    decoded = load_upload(data, declared_type="image/png", filename="avatar.png")
    assert seen == [image] and decoded.trailer_bytes == len(php)
    with pytest.raises(UnsupportedMediaType, match="PNG image is followed by"):
        check_upload(data, declared_type="image/png", filename="avatar.png", policy=STRICT)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xd8\xff<!DOCTYPE html><html><script>alert(1)</script></html>",
        b"\x89PNG\r\n\x1a\n" + samples.png_chunk(b"tEXt", b"<html>" * 10) + b"</html>",
        b"RIFF\x20\x00\x00\x00WEBPHTML" + b"<html><script>alert(1)</script></html>",
    ],
    ids=["jpeg-signature", "png-signature", "webp-signature"],
)
def test_files_that_only_start_like_an_image_are_refused(data):
    with pytest.raises(UnsupportedMediaType):
        load_upload(data)


@pytest.mark.parametrize(
    "declared, name, claim",
    [
        ("image/jpeg", None, "Content-Type says image/jpeg"),
        ("image/webp", None, "Content-Type says image/webp"),
        ("text/plain", None, "Content-Type says text/plain"),
        (None, "photo.jpg", "extension says JPEG"),
        (None, "photo.webp", "extension says WebP"),
        (None, "photo.png.php", "extension is not .jpg, .jpeg, .jfif, .png or .webp"),
        ("image/png", "photo.txt", "extension is not"),
    ],
)
def test_claims_that_disagree_with_the_content_are_refused(declared, name, claim):
    with pytest.raises(UnsupportedMediaType) as caught:
        check_upload(samples.sample("image/png"), declared_type=declared, filename=name)
    message = caught.value.message
    assert "content is image/png" in message and claim in message


def test_messages_never_repeat_the_file_name_or_a_raw_content_type():
    canary = uuid.uuid4().hex
    png = samples.sample("image/png")
    for declared, name in [
        (None, f"{canary}.jpg"),
        (None, f"{canary}.{canary}"),
        (f"image/x-{canary}\r\nSet-Cookie: a=b", None),
        (None, f"<script>{canary}</script>.gif"),
    ]:
        with pytest.raises(UnsupportedMediaType) as caught:
            check_upload(png, declared_type=declared, filename=name)
        assert canary not in caught.value.message
        assert "\n" not in caught.value.message and "<" not in caught.value.message


# ------------------------------------------------------------- structure: damaged (422)


@pytest.mark.parametrize("mime", MIMES)
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, -2])
def test_truncated_images_are_unprocessable(mime, keep):
    data = samples.sample(mime, samples.noise(96, 64))
    cut = data[:keep] if keep < 0 else data[: int(len(data) * keep)]
    with pytest.raises(UnprocessableImage) as caught:
        load_upload(cut)
    assert caught.value.status == 422


def test_a_jpeg_without_its_end_marker_is_truncated():
    data = samples.sample("image/jpeg")
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(UnprocessableImage, match="truncated"):
        check_upload(data[:-2])


def test_png_with_a_bad_crc_is_unprocessable():
    png = samples.sample("image/png", samples.noise())
    at = png.index(b"IDAT")
    idat = png[at + 4 : at + 4 + int.from_bytes(png[at - 4 : at], "big")]
    broken = samples.replace_png_chunk(png, b"IDAT", bytes([idat[0] ^ 1]) + idat[1:], fix_crc=False)
    with pytest.raises(UnprocessableImage, match="CRC"):
        check_upload(broken)


def test_png_with_corrupt_compressed_data_is_unprocessable():
    png = samples.sample("image/png", samples.noise())
    at = png.index(b"IDAT")
    idat = png[at + 4 : at + 4 + int.from_bytes(png[at - 4 : at], "big")]
    broken = samples.replace_png_chunk(
        png, b"IDAT", idat[:10] + b"\x13" * 20 + idat[30:], fix_crc=True
    )
    assert check_upload(broken) == "image/png"  # the structure is intact...
    with pytest.raises(UnprocessableImage, match="could not be decoded"):
        load_upload(broken)  # ...the pixels are not


def test_jpeg_with_a_broken_huffman_table_is_unprocessable():
    data = bytearray(samples.sample("image/jpeg", samples.noise()))
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # code counts that add up to far more than 256
    assert check_upload(bytes(data)) == "image/jpeg"
    with pytest.raises(UnprocessableImage):
        load_upload(bytes(data))


def test_jpeg_with_an_invalid_marker_in_the_middle_is_unprocessable():
    data = samples.sample("image/jpeg", samples.noise())
    sos = data.index(b"\xff\xda")
    broken = data[: sos + 40] + b"\xff\x02" + data[sos + 40 :]
    with pytest.raises(UnprocessableImage, match="invalid marker"):
        check_upload(broken)


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_with_a_corrupt_bitstream_is_unprocessable(lossless):
    data = bytearray(samples.sample("image/webp", samples.noise(), lossless=lossless))
    if lossless:
        data[30:60] = b"\xff" * 30
    else:
        data[20:23] = b"\xff\xff\x07"  # first partition far longer than the chunk
    with pytest.raises(UnprocessableImage):
        load_upload(bytes(data))


def test_webp_whose_chunk_overruns_the_riff_is_unprocessable():
    data = bytearray(samples.sample("image/webp"))
    data[16:20] = (len(data) * 2).to_bytes(4, "little")
    with pytest.raises(UnprocessableImage, match="overruns"):
        check_upload(bytes(data))


# ------------------------------------------------------------------- MPF (MPO, Ultra HDR)


def _mpo() -> bytes:
    second = Image.new("RGB", (64, 48), (0, 0, 200))
    return samples.encode(samples.quadrants(), "MPO", save_all=True, append_images=[second])


def test_jpeg_with_the_images_its_mpf_index_lists_is_accepted():
    data = _mpo()
    decoded = load_upload(data, declared_type="image/jpeg", filename="stereo.jpg")
    assert decoded.pixels.shape == (48, 64, 3)
    samples.assert_quadrants(  # the first image, not the all-blue second one
        decoded.pixels, [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE], 12
    )


def test_large_mpo_is_decoded_at_a_reduced_scale_too():
    first = samples.quadrants(2000, 1000)
    data = samples.encode(first, "MPO", save_all=True, append_images=[samples.noise(200, 100)])
    decoded = load_upload(data, policy=UploadPolicy(max_side=400))
    assert decoded.original_size == (2000, 1000) and decoded.pixels.shape == (200, 400, 3)
    samples.assert_quadrants(
        decoded.pixels, [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE], 12
    )


def test_mpf_index_does_not_cover_anything_else(monkeypatch):
    """What the MPF index does not list is a trailer: dropped undecoded, or refused by the
    strict policy; a listed image that is not a JPEG ends the image before it."""
    data = _mpo()
    second = data.rindex(b"\xff\xd8\xff")
    not_a_jpeg = data[:second] + b"\x00\x00" + data[second + 2 :]
    primary_end = data.index(b"\xff\xd9", data.index(b"\xff\xda")) + 2
    seen = spy_on_the_decoder(monkeypatch)
    for upload, image in ((data + b"PK\x03\x04 appended", data), (not_a_jpeg, data[:primary_end])):
        decoded = load_upload(upload)
        assert seen[-1] == image and decoded.trailer_bytes == len(upload) - len(image)
        samples.assert_quadrants(
            decoded.pixels, [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE], 12
        )
        with pytest.raises(UnsupportedMediaType):
            check_upload(upload, policy=STRICT)


# ------------------------------------------------------------------------ byte caps (413/400)


def test_over_the_byte_cap_is_too_large_before_anything_else():
    with pytest.raises(PayloadTooLarge) as caught:
        check_upload(b"\x00" * (10 * 1024 * 1024 + 1))
    assert caught.value.status == 413
    assert check_upload(samples.sample("image/png"), policy=UploadPolicy(max_bytes=4096))
    with pytest.raises(PayloadTooLarge, match="limit is 100 bytes"):
        load_upload(samples.sample("image/png"), policy=UploadPolicy(max_bytes=100))


def test_empty_body_is_a_bad_request():
    with pytest.raises(BadRequest, match="empty") as caught:
        load_upload(b"", declared_type="image/png", filename="a.png")
    assert caught.value.status == 400


# --------------------------------------------------------------------------- pixel caps (413)

BOMBS = {
    "png-30000x30000": samples.png_bomb,
    "jpeg-60000x60000": samples.jpeg_bomb,
    "webp-lossless-16384x16384": samples.webp_lossless_bomb,
    "webp-lossy-16383x16383": samples.webp_lossy_bomb,
    "webp-canvas-100000x100000": samples.webp_canvas_bomb,
}


@pytest.mark.parametrize("make", BOMBS.values(), ids=BOMBS.keys())
def test_header_bombs_are_too_large_with_tiny_memory(make):
    data = make()
    assert len(data) < 32 * 1024
    mime = sniff_mime(data)
    tracemalloc.start()
    try:
        for call in (
            lambda: check_upload(data),
            lambda: load_upload(data, declared_type=mime),
            lambda: decode_image(data, mime=mime),
        ):
            with pytest.raises(PayloadTooLarge, match="pixels") as caught:
                call()
            assert caught.value.status == 413
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024, f"peak Python allocation {peak} bytes"


def test_header_bombs_do_not_raise_the_process_rss():
    """tracemalloc does not see C allocations (Pillow's, libwebp's): measure the peak RSS of a
    fresh process around all the bombs instead. Decoding the PNG alone would need 900 MB."""
    code = (
        "import resource\n"
        "from security.uploads import load_upload\n"
        "from security.errors import PayloadTooLarge\n"
        "from tests.security.test_uploads import BOMBS\n"
        "bombs = [make() for make in BOMBS.values()]\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "for data in bombs * 3:\n"
        "    try:\n"
        "        load_upload(data)\n"
        "    except PayloadTooLarge:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('not refused')\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 8 * 1024, f"peak RSS grew by {done.stdout.strip()} KiB"


def test_pixel_cap_follows_the_policy():
    data = samples.sample("image/png", samples.noise(100, 50))
    assert load_upload(data, policy=UploadPolicy(max_pixels=5000)).original_size == (100, 50)
    with pytest.raises(PayloadTooLarge, match="100x50 pixels; the limit is 4999"):
        load_upload(data, policy=UploadPolicy(max_pixels=4999))
    with pytest.raises(PayloadTooLarge):
        decode_image(data, mime="image/png", policy=UploadPolicy(max_pixels=4999))


def test_a_policy_above_pillows_cap_is_honoured():
    """Pillow's global bomb cap is only a backstop: a policy allowing more is not refused by it."""
    data = samples.sample("image/png", samples.noise(64, 48))
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 1000
    try:
        assert load_upload(data, policy=UploadPolicy(max_pixels=64 * 48)).pixels.shape[:2] == (
            48,
            64,
        )
        assert Image.MAX_IMAGE_PIXELS == 64 * 48
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# ------------------------------------------------------------------------------ the API


def test_policy_validation_and_settings():
    from settings import Settings

    with pytest.raises(ValueError, match="max_bytes"):
        UploadPolicy(max_bytes=0)
    with pytest.raises(ValueError, match="max_side"):
        UploadPolicy(max_side=1.5)
    settings = Settings.from_env({"M2FP_MAX_UPLOAD_MB": "2", "M2FP_MAX_SIDE": "640"})
    policy = UploadPolicy.from_settings(settings)
    assert policy == UploadPolicy(max_bytes=2 * 1024 * 1024, max_pixels=24_000_000, max_side=640)


def test_bytes_like_bodies_are_accepted():
    data = samples.sample("image/webp")
    for body in (bytearray(data), memoryview(data)):
        assert check_upload(body) == "image/webp"
        assert load_upload(body).pixels.shape == (48, 64, 3)
        assert decode_image(body, mime="image/webp").bytes_in == len(data)
    with pytest.raises(PayloadTooLarge):
        check_upload(memoryview(data), policy=UploadPolicy(max_bytes=len(data) - 1))


def test_decode_image_rejects_a_mime_it_does_not_handle():
    with pytest.raises(ValueError, match="image/gif"):
        decode_image(samples.other_formats()["gif"], mime="image/gif")


def test_importing_security_caps_opencv_before_any_cv2_import():
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    env["PYTHONPATH"] = str(REPO)
    code = (
        "import os, sys, security\n"
        "assert 'cv2' not in sys.modules\n"
        "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'], os.environ['OPENCV_IO_MAX_IMAGE_WIDTH'],"
        " os.environ['OPENCV_IO_MAX_IMAGE_HEIGHT'])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    # the service's own default pixel cap (M2FP_MAX_PIXELS)
    assert done.stdout.split() == [str(Settings().max_pixels), "65535", "65535"]
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = "1000"  # an operator's own value wins
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.stdout.split()[0] == "1000"


# ------------------------------------------------------------------------------ robustness


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
@pytest.mark.parametrize("mime", MIMES)
def test_mutated_files_only_ever_raise_service_errors(mime):
    """Seeded random byte flips, cuts and insertions: every outcome is a decoded image or one of
    the documented errors, never an IndexError or a raw Pillow exception."""
    rng = np.random.default_rng(sum(mime.encode()))
    base = samples.sample(mime, samples.noise(40, 30), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08")
    outcomes = set()
    for _ in range(150):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(len(data)))
            action = rng.random()
            if action < 0.6:
                data[at] = int(rng.integers(256))
            elif action < 0.8:
                del data[at : at + int(rng.integers(1, 16))]
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 8)))
        try:
            load_upload(bytes(data))
            outcomes.add("ok")
        except (BadRequest, PayloadTooLarge, UnsupportedMediaType, UnprocessableImage) as exc:
            outcomes.add(exc.status)
    assert 422 in outcomes and outcomes <= {"ok", 400, 413, 415, 422}


@pytest.mark.parametrize("mime", MIMES)
def test_corrupt_exif_is_ignored_with_a_warning(mime):
    data = samples.sample(mime, exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        decoded = load_upload(data)
    samples.assert_quadrants(
        decoded.pixels, [samples.RED, samples.GREEN, samples.BLUE, samples.WHITE], 12
    )
