"""`python -m m2fp parse`: outputs on a tiny model directory, and the error exits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2fp import render
from m2fp.cli import EXIT_FAILED, EXIT_MODEL, EXIT_USAGE, ImageReadError, main, read_image
from m2fp.parser import Parser, ParsingResult
from tests.support.paths import REPO


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour gradients with a little noise: an image that survives JPEG well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (h + w)], axis=-1)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {"png": folder / "walk.png", "jpg": folder / "street.jpg"}
    Image.fromarray(_photo(60, 84, 1)).save(paths["png"])
    Image.fromarray(_photo(90, 70, 2)).save(paths["jpg"], quality=95)
    paths["text"] = folder / "notes.png"
    paths["text"].write_text("not an image\n")
    paths["truncated"] = folder / "cut.png"
    paths["truncated"].write_bytes(paths["png"].read_bytes()[:300])
    return paths


@pytest.fixture(scope="module")
def walk(tiny_model_dir: Path, images: dict[str, Path]) -> tuple[np.ndarray, ParsingResult]:
    """walk.png and the library's own result for it, to compare the CLI's outputs with."""
    image = read_image(images["png"])
    return image, Parser(tiny_model_dir).parse(image)


def _run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "m2fp", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_parse_writes_overlay_labels_and_json(
    tiny_model_dir: Path,
    images: dict[str, Path],
    walk: tuple[np.ndarray, ParsingResult],
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    proc = _run(
        "parse", images["png"], images["jpg"], "--model-dir", tiny_model_dir,
        "--out", out, "--json", "--alpha", "0.5", "--device", "cpu",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("model loaded on cpu (float32) in ")
    assert lines[1].startswith(f"[1/2] {images['png']}: 84x60, ")
    assert lines[2].startswith(f"[2/2] {images['jpg']}: 70x90, ")
    assert lines[2].endswith("-> street_overlay.png, street_labels.png, street.json")
    assert sorted(p.name for p in out.iterdir()) == [
        "street.json", "street_labels.png", "street_overlay.png",
        "walk.json", "walk_labels.png", "walk_overlay.png",
    ]  # fmt: skip

    # The outputs are those of the library on the same image.
    image, result = walk
    labels = Image.open(out / "walk_labels.png")
    assert labels.mode == "P"
    np.testing.assert_array_equal(np.asarray(labels), result.semantic)
    overlay = np.asarray(Image.open(out / "walk_overlay.png"))
    np.testing.assert_array_equal(overlay, render.overlay(image, result.semantic, alpha=0.5))
    doc = json.loads((out / "walk.json").read_text())
    assert list(doc) == ["image", "classes", "persons", "label_map"]
    assert doc["image"] == {"width": 84, "height": 60}
    assert len(doc["persons"]) == len(result.persons)
    assert all(p["mask"]["format"] == "rle" for p in doc["persons"])


def test_parse_options_in_process(
    tiny_model_dir: Path,
    images: dict[str, Path],
    walk: tuple[np.ndarray, ParsingResult],
    tmp_path: Path,
) -> None:
    args = ["parse", str(images["png"]), "--model-dir", str(tiny_model_dir), "--out", str(tmp_path)]
    extra = ["--format", "webp", "--classes", "2,5", "--cutout", "13", "--json"]
    assert main([*args, *extra, "--mask-format", "png"]) == 0
    image, result = walk
    webp = Image.open(tmp_path / "walk_overlay.webp")
    assert webp.format == "WEBP"
    expected = render.overlay(image, result.semantic, alpha=0.6, classes=[2, 5])
    np.testing.assert_array_equal(np.asarray(webp), expected)
    cut = np.asarray(Image.open(tmp_path / "walk_cutout.png"))
    np.testing.assert_array_equal(cut, render.cutout(image, result.semantic, [13]))
    doc = json.loads((tmp_path / "walk.json").read_text())
    assert all(p["mask"]["format"] == "png" for p in doc["persons"])


def test_unreadable_images_fail_but_others_are_written(
    tiny_model_dir: Path, images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    missing = images["png"].with_name("missing.jpg")
    paths = [images["text"], missing, images["truncated"], images["jpg"], images["png"].parent]
    code = main(
        ["parse", *map(str, paths), "--model-dir", str(tiny_model_dir), "--out", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == EXIT_FAILED
    assert f"[1/5] {images['text']}: error: not an image" in err
    assert f"[2/5] {missing}: error: no such file" in err
    assert f"[3/5] {images['truncated']}: error: cannot decode" in err
    assert f"[4/5] {images['jpg']}: 70x90" in err
    assert "[5/5]" in err and "is a directory" in err
    assert err.strip().endswith("4 of 5 image(s) failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["street_labels.png", "street_overlay.png"]


def test_missing_model_dir_subprocess(images: dict[str, Path], tmp_path: Path) -> None:
    proc = _run("parse", images["png"], "--model-dir", tmp_path / "nowhere", "--out", tmp_path)
    assert proc.returncode == EXIT_MODEL
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot load the model:") and "does not exist" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["config", "weights", "no_weights"])
def test_corrupt_model_dir(
    damage: str,
    tiny_model_dir: Path,
    images: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    if damage == "config":
        (model / "configuration.json").write_text("{not json")
    elif damage == "weights":
        (model / "pytorch_model.pt").write_bytes(b"\x00" * 1000)
    else:
        (model / "pytorch_model.pt").unlink()
    code = main(["parse", str(images["png"]), "--model-dir", str(model), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL
    assert err.count("\n") == 1 and err.startswith("error: cannot load the model:")
    assert str(model) in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--alpha", "1.5"],
        ["--alpha", "x"],
        ["--classes", "2,25"],
        ["--device", "tpu"],
        ["--device", "cpu", "--precision", "fp16"],
        ["--precision", "fp8"],
    ],
)
def test_bad_options_are_usage_errors(
    extra: list[str], tiny_model_dir: Path, images: dict[str, Path]
) -> None:
    with pytest.raises(SystemExit) as exc:
        code = main(["parse", str(images["png"]), "--model-dir", str(tiny_model_dir), *extra])
        raise SystemExit(code)
    assert exc.value.code == EXIT_USAGE


def test_same_output_names_refused(
    tiny_model_dir: Path, images: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    twin = tmp_path / "other" / "walk.png"
    twin.parent.mkdir()
    shutil.copy(images["png"], twin)
    args = [str(images["png"]), str(twin), "--model-dir", str(tiny_model_dir)]
    assert main(["parse", *args, "--out", str(tmp_path / "o")]) == EXIT_USAGE
    assert "same outputs" in capsys.readouterr().err


def test_read_image_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="not an image"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_read_image_applies_exif_orientation(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    Image.fromarray(_photo(40, 64, 3)).save(path, exif=exif)
    assert read_image(path).shape == (64, 40, 3)
