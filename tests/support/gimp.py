"""Open a file with GIMP's own loader in batch mode and report what it found (image size and
its layers). GIMP runs headless and offline, with its profile in a temporary directory."""

from __future__ import annotations

import os
import re
import shutil
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
_LINE = re.compile(r"(IMAGE|LAYER)\|(.*)\|(\d+)\|(\d+)$")


def available() -> bool:
    return shutil.which("gimp") is not None


def load_layers(path: Path, workdir: Path) -> tuple[tuple[int, int], list[tuple[str, int, int]]]:
    """((width, height), [(layer name, width, height), ...] bottom first) as GIMP loads `path`.

    Raises:
        AssertionError: GIMP failed or reported no image.
    """
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
    script = _SCRIPT.format(path=str(path).replace("\\", "\\\\").replace('"', '\\"'))
    done = subprocess.run(
        ["gimp", "-i", "-n", "--no-data", "--no-fonts", "-b", script, "-b", "(gimp-quit 0)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=workdir,
        timeout=180,
        check=False,
    )
    output = done.stdout + done.stderr
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
