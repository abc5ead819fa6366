"""Planning a batch: which files go (input discovery) and where each result goes (output
naming). Files named on the command line are sent whatever their extension; directories are
walked (hidden entries and the output directory excluded) for .jpg, .jpeg, .png and .webp,
everything else there is listed as skipped. `photos/trip/beach.jpg` → `parsed/trip/
beach-overlay.png` (or `beach.json`, `beach-cutout.webp`): the relative path is kept, the name
says which output it holds.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from m2fp_client.client import ClientError
from m2fp_client.outcomes import FAILED, Outcome

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
# Output file extension from the response's media type; anything else keeps the predicted one.
EXTENSIONS = {
    "application/json": "json",
    "image/png": "png",
    "image/webp": "webp",
    "image/vnd.adobe.photoshop": "psd",
    "image/openraster": "ora",
}


@dataclass(frozen=True)
class Job:
    """One input file and the output file it is expected to give."""

    source: Path
    target: Path


@dataclass
class Plan:
    """What a batch will do: the jobs, the files skipped in directories, and jobs refused
    before any request (two inputs that would write the same output)."""

    out_dir: Path
    params: dict[str, str]
    jobs: list[Job] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    conflicts: list[Outcome] = field(default_factory=list)


def output_extension(params: Mapping[str, str]) -> str:
    """The extension an output is expected to have: json, or the image `format` (png)."""
    if params.get("output") == "json":
        return "json"
    return params.get("format", "png")


def _check_names(params: Mapping[str, str]) -> None:
    """`output` and `format` become part of file names: plain names only."""
    for key in ("output", "format"):
        if key in params and not _NAME.fullmatch(params[key]):
            raise ClientError(f"{key} must be a plain name such as png or cutout: {params[key]!r}")


def plan_batch(
    inputs: Sequence[str | Path], *, out_dir: str | Path, params: Mapping[str, str]
) -> Plan:
    """Expand `inputs` (files and directories) into jobs writing under `out_dir`.

    Raises ClientError for an input that does not exist."""
    _check_names(params)
    out_dir = Path(out_dir)
    plan = Plan(out_dir=out_dir, params=dict(params))
    output = params.get("output", "overlay")
    # beach.jpg → beach.json, beach-overlay.png, beach-cutout.webp, …
    suffix = ".json" if output == "json" else f"-{output}.{output_extension(params)}"
    exclude = out_dir.resolve()
    pairs: list[tuple[Path, Path]] = []  # (source, path relative to out_dir without suffix)
    for raw in inputs:
        path = Path(raw)
        if path.is_dir() and path.resolve() == exclude:
            raise ClientError(f"--out {out_dir} is an input folder: its results would be inputs")
        if path.is_dir():
            for source in _walk(path, exclude):
                if source.suffix.lower() in IMAGE_SUFFIXES:
                    pairs.append((source, source.relative_to(path).with_suffix("")))
                else:
                    plan.skipped.append(source)
        elif path.exists():
            pairs.append((path, Path(path.stem)))
        else:
            raise ClientError(f"{path} does not exist")
    by_target: dict[Path, list[Path]] = {}
    seen: set[Path] = set()
    for source, stem in pairs:
        if source.resolve() in seen:  # named twice (itself and its folder): once is enough
            continue
        seen.add(source.resolve())
        target = out_dir / stem.parent / (stem.name + suffix)
        by_target.setdefault(target, []).append(source)
    for target, sources in by_target.items():
        if len(sources) == 1:
            plan.jobs.append(Job(sources[0], target))
            continue
        for source in sources:
            others = ", ".join(str(s) for s in sources if s != source)
            plan.conflicts.append(
                Outcome(
                    source,
                    FAILED,
                    target,
                    code="output_conflict",
                    message=f"{others} would write the same {target}; rename one",
                )
            )
    return plan


def _walk(root: Path, exclude: Path) -> Iterable[Path]:
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude
        )
        for name in sorted(files):
            if not name.startswith("."):
                yield here / name
