"""Command line: `python -m m2fp parse IMAGE... --model-dir DIR` and `python -m m2fp download`.

Each sub-command is one `add_*_command(subparsers)` function registered in `COMMANDS`; it sets
`func`, which receives the parsed arguments and returns the exit status. Exit statuses:
0 success, 1 a download or one or more images failed, 2 bad command line, 3 the model
directory or checkpoint cannot be loaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from m2fp.device import DEVICE_CHOICES, PRECISIONS

if TYPE_CHECKING:
    from m2fp.engine import InferenceEngine

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MODEL = 3


class ImageReadError(Exception):
    """An input image that cannot be opened or decoded."""


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


# ----------------------------------------------------------------------------- parse


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _class_ids(text: str) -> list[int]:
    from m2fp.labels import NUM_CLASSES

    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ids like 2,13, got {text!r}") from None
    bad = [i for i in ids if not 0 <= i < NUM_CLASSES]
    if not ids or bad:
        raise argparse.ArgumentTypeError(f"class ids must be in 0..{NUM_CLASSES - 1}: {text!r}")
    return ids


def add_parse_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "parse",
        help="parse images with a local model directory",
        description="Parse each IMAGE and write, into --out, NAME_overlay.png (the colour "
        "overlay), NAME_labels.png (palette PNG whose pixel values are the class ids) and, "
        "with --json, NAME.json (the API's JSON result).",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG, PNG or WebP files")
    p.add_argument(
        "--model-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="ModelScope-style model directory (configuration.json + pytorch_model.pt)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="output directory (default: .)"
    )
    p.add_argument("--json", action="store_true", help="also write NAME.json")
    p.add_argument(
        "--mask-format",
        choices=("rle", "png"),
        default="rle",
        help="per-person masks in the JSON: COCO RLE (default) or base64 PNG",
    )
    p.add_argument("--alpha", type=_alpha, default=0.6, help="overlay opacity 0..1 (0.6)")
    p.add_argument(
        "--classes", type=_class_ids, metavar="IDS", help="tint only these class ids, e.g. 2,13"
    )
    p.add_argument(
        "--cutout", type=_class_ids, metavar="IDS", help="also write NAME_cutout.png of these ids"
    )
    p.add_argument(
        "--format", choices=("png", "webp"), default="png", help="overlay file format (png)"
    )
    p.add_argument(
        "--device",
        default="auto",
        help=f"{DEVICE_CHOICES}; auto: CUDA when available, else the CPU (auto)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: fp16 on CUDA, fp32 on the CPU; fp16 needs CUDA (auto)",
    )
    p.set_defaults(func=run_parse)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB, EXIF orientation applied.

    Raises:
        ImageReadError: missing, unreadable, not an image, truncated, or too many pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise ImageReadError("no such file") from None
    except IsADirectoryError:
        raise ImageReadError("is a directory") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image Pillow can decode") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(str(exc)) from None
    except OSError as exc:
        if exc.errno is not None:  # the file system's answer, e.g. permission denied
            raise ImageReadError(f"cannot read: {exc.strerror}") from None
        raise ImageReadError(f"cannot decode: {exc}") from None  # e.g. truncated
    except (SyntaxError, ValueError) as exc:  # what some Pillow decoders raise on bad data
        raise ImageReadError(f"cannot decode: {exc}") from None
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageReadError("image has no pixels")
    return rgb


def _write(path: Path, data: bytes | str) -> None:
    """Write through a temporary name and rename, so an output is complete or absent."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _output_stems(images: Sequence[Path]) -> list[str] | str:
    """Output base names (image stems); an error message when two images share one."""
    stems = [Path(p).stem for p in images]
    seen: dict[str, Path] = {}
    for path, stem in zip(images, stems, strict=True):
        if stem in seen:
            return f"{seen[stem]} and {path} would write the same outputs ({stem}_*)"
        seen[stem] = path
    return stems


def _start_engine(args: argparse.Namespace) -> InferenceEngine | int:
    """The started engine, or the exit status after printing why it cannot start."""
    from m2fp.checkpoint import CheckpointError
    from m2fp.engine import InferenceEngine

    start = time.perf_counter()
    try:
        # The service's engine, used directly (predict, no queue): device and precision are
        # checked by m2fp.device, like M2FP_DEVICE / M2FP_PRECISION.
        engine = InferenceEngine(
            args.model_dir, device=args.device, precision=args.precision, warmup=False
        )
        engine.start()
    except CheckpointError as exc:  # ModelDirError included
        _error(f"cannot load the model: {exc}")
        return EXIT_MODEL
    except (ValueError, RuntimeError) as exc:  # device or precision unusable here
        _error(str(exc))
        return EXIT_USAGE
    dtype = str(engine.dtype).removeprefix("torch.")
    seconds = time.perf_counter() - start
    print(f"model loaded on {engine.device} ({dtype}) in {seconds:.1f} s", file=sys.stderr)
    return engine


def run_parse(args: argparse.Namespace) -> int:
    stems = _output_stems(args.images)
    if isinstance(stems, str):
        _error(stems)
        return EXIT_USAGE
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _error(f"cannot create output directory {args.out}: {exc.strerror or exc}")
        return EXIT_FAILED
    engine = _start_engine(args)
    if isinstance(engine, int):
        return engine
    try:
        return _parse_all(args, engine, stems)
    finally:
        engine.close()


def _parse_all(args: argparse.Namespace, engine: InferenceEngine, stems: list[str]) -> int:
    import json

    from m2fp.export import result_to_json
    from m2fp.render import cutout, encode_image, label_map_png, overlay

    failed = 0
    total = len(args.images)
    for index, (path, stem) in enumerate(zip(args.images, stems, strict=True), start=1):
        prefix = f"[{index}/{total}] {path}"
        start = time.perf_counter()
        try:
            image = read_image(Path(path))
        except ImageReadError as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        result = engine.predict([image])[0]
        outputs = {
            f"{stem}_overlay.{args.format}": encode_image(
                overlay(image, result.semantic, alpha=args.alpha, classes=args.classes),
                args.format,
            ),
            f"{stem}_labels.png": label_map_png(result.semantic, palette=True),
        }
        if args.cutout:
            outputs[f"{stem}_cutout.png"] = encode_image(
                cutout(image, result.semantic, args.cutout)
            )
        if args.json:
            doc = result_to_json(result, image, mask_format=args.mask_format, alpha=args.alpha)
            outputs[f"{stem}.json"] = json.dumps(doc, separators=(",", ":")) + "\n"
        try:
            for name, data in outputs.items():
                _write(args.out / name, data)
        except OSError as exc:
            print(f"{prefix}: error: cannot write: {exc.strerror or exc}", file=sys.stderr)
            failed += 1
            continue
        height, width = result.semantic.shape
        parts = int(np.count_nonzero(np.bincount(result.semantic.ravel())[1:]))
        print(
            f"{prefix}: {width}x{height}, {len(result.persons)} person(s), {parts} part "
            f"classes, {time.perf_counter() - start:.2f} s -> {', '.join(outputs)}",
            file=sys.stderr,
        )
    if failed:
        print(f"{failed} of {total} image(s) failed", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# -------------------------------------------------------------------------- download


def add_download_command(subparsers: argparse._SubParsersAction) -> None:
    from m2fp import download

    p = subparsers.add_parser(
        "download",
        help="download the ModelScope model files",
        description=f"Download {', '.join(download.MODEL_FILES)} of {download.MODEL_ID} over "
        "HTTPS into --dest: resumes an interrupted download, installs each file only once "
        "complete and checked, and prints each file's SHA-256 for pinning.",
    )
    p.add_argument(
        "--dest",
        type=Path,
        default=Path(download.DEFAULT_DEST),
        metavar="DIR",
        help="(%(default)s)",
    )
    p.add_argument("--revision", default=download.DEFAULT_REVISION, help="(%(default)s)")
    p.add_argument(
        "--endpoint", default=download.DEFAULT_ENDPOINT, metavar="URL", help="(%(default)s)"
    )
    p.add_argument("--model-id", default=download.MODEL_ID, help=argparse.SUPPRESS)
    p.add_argument("--sha256", metavar="HEX", help=f"required SHA-256 of {download.WEIGHTS_FILE}")
    p.add_argument(
        "--retries", type=int, default=3, metavar="N", help="resumes after a dropped connection (3)"
    )
    p.add_argument("--force", action="store_true", help="download files already present again")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_download)


def run_download(args: argparse.Namespace) -> int:
    from m2fp.download import WEIGHTS_FILE, DownloadError, download_model

    try:
        hashes = download_model(
            args.dest,
            model_id=args.model_id,
            revision=args.revision,
            endpoint=args.endpoint,
            sha256=args.sha256,
            retries=max(args.retries, 0),
            force=args.force,
            progress=not args.quiet,
        )
    except DownloadError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted; run the same command again to resume")
        return 130
    weights = hashes.get(WEIGHTS_FILE)
    print(f"model files in {args.dest}")
    if weights:
        print(f"pin the weights with M2FP_WEIGHTS_SHA256={weights}")
    return EXIT_OK


# ------------------------------------------------------------------------------ main

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_parse_command,
    add_download_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m m2fp", description="M2FP human parsing: parse images, fetch the model."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
