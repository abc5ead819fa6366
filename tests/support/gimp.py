"""Open a file with GIMP's own loader in batch mode and report what it found (image size and
its layers). GIMP runs headless and offline, with its profile in a temporary directory."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

# Script-Fu: load, then one message per top-level layer, top of the stack first.
_SCRIPT = """
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "{path}" "{path}")))
       (layers (cadr (gimp-image-get-layers img))))
  (gimp-message (string-append "IMAGE|-|" (number->string (car (gimp-image-width img)))
                               "|" (number->string (car (gimp-image-height img)))))
  (let loop ((i 0))
    (when (< i (vector-length layers))
      (let ((layer (vector-ref layers i)))
        (gimp-message (string-append
          "LAYER|" (car (gimp-item-get-name layer))
          "|" (number->string (car (gimp-drawable-width layer)))
          "|" (number->string (car (gimp-drawable-height layer))))))
      (loop (+ i 1)))))
"""
_LINE = re.compile(r"(IMAGE|LAYER|ALPHA)\|(.*)\|(\d+)\|(\d+)$")


_ALPHA_SCRIPT = """
(let* ((img (car (gimp-file-load RUN-NONINTERACTIVE "{path}" "{path}")))
       (layer (car (gimp-image-get-layer-by-name img "{name}"))))
  {probes})
"""
_PROBE = """(gimp-message (string-append "ALPHA|{x},{y}|" (number->string
  (vector-ref (cadr (gimp-drawable-get-pixel layer {x} {y})) 3)) "|0"))"""


def _run(script: str, workdir: Path) -> str:
    home = workdir / "gimp-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIMP2_DIRECTORY": str(home / "gimp2"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
        "LANG": "C.UTF-8",
    }
    done = subprocess.run(
        ["gimp", "-i", "-n", "--no-data", "--no-fonts", "-b", script, "-b", "(gimp-quit 0)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=180,
        check=False,
    )
    return done.stdout + done.stderr


def _quoted(path: Path) -> str:
    return str(path).replace("\\", "\\\\").replace('"', '\\"')


def layer_alpha(
    path: Path, workdir: Path, name: str, points: list[tuple[int, int]]
) -> dict[tuple[int, int], int]:
    """Alpha (0-255) GIMP finds at layer-local (x, y) points of the layer called `name`."""
    probes = "\n  ".join(_PROBE.format(x=x, y=y) for x, y in points)
    output = _run(_ALPHA_SCRIPT.format(path=_quoted(path), name=name, probes=probes), workdir)
    found = {}
    for line in output.splitlines():
        match = _LINE.search(line.strip())
        if match and match.group(1) == "ALPHA":
            x, y = match.group(2).split(",")
            found[(int(x), int(y))] = int(match.group(3))
    assert set(found) == set(points), f"GIMP did not probe {path.name}:\n{output[-2000:]}"
    return found


def load_layers(path: Path, workdir: Path) -> tuple[tuple[int, int], list[tuple[str, int, int]]]:
    """((width, height), [(layer name, width, height), ...] bottom first) as GIMP loads `path`.

    Raises:
        AssertionError: GIMP failed or reported no image.
    """
    output = _run(_SCRIPT.format(path=_quoted(path)), workdir)
    size, layers = None, []
    for line in output.splitlines():
        match = _LINE.search(line.strip())
        if not match:
            continue
        kind, name, width, height = match.groups()
        if kind == "IMAGE":
            size = (int(width), int(height))
        else:
            layers.append((name, int(width), int(height)))
    assert size is not None, f"GIMP did not load {path.name}:\n{output[-2000:]}"
    return size, layers[::-1]
