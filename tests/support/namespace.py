"""A bubblewrap namespace for tests that watch the filesystem around a real server."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.support.paths import REPO

Namespace = Callable[..., tuple[list[str], dict[str, Path]]]
_PRIVATE = {"tmp": Path("/tmp"), "var_tmp": Path("/var/tmp")}  # replaced inside the namespace


def _keep_visible(path: Path, dirs: Mapping[str, Path], *, read_only: bool) -> list[str]:
    """bubblewrap arguments that bind `path` back at its own place when it lies under a
    directory the namespace replaces (a checkout cloned into /tmp: the server runs from it),
    with its mount point made now, not by bubblewrap while a watch may be running."""
    for name, private in _PRIVATE.items():
        if path.is_relative_to(private):
            (dirs[name] / path.relative_to(private)).mkdir(parents=True, exist_ok=True)
            return ["--ro-bind" if read_only else "--bind", str(path), str(path)]
    return []


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    """`namespace(ro_binds, *, read_only=False) -> (wrapper, dirs)`: a bubblewrap command
    prefix giving the server private /tmp, /var/tmp and /dev/shm (directories only it uses, so
    every inotify event there is its own; `dirs` names them: "tmp", "var_tmp", "shm") and
    $HOME=/tmp/home; `ro_binds` maps paths inside (under /tmp) to read-only host paths.
    `read_only=True` makes everything else read-only: the private directories are then the
    only places the server can write at all."""
    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is missing: ./scripts/setup installs it"
    shms: list[Path] = []

    def make(ro_binds: Mapping[str, Path], *, read_only: bool = False):
        dirs = {name: tmp_path / name for name in ("tmp", "var_tmp")}
        for d in dirs.values():
            d.mkdir()
        dirs["shm"] = Path(tempfile.mkdtemp(prefix="m2fp-test-", dir="/dev/shm"))
        shms.append(dirs["shm"])
        # Mount points made now, not by bubblewrap while a watch may be running.
        (dirs["tmp"] / "home").mkdir()
        for inside in ro_binds:
            (dirs["tmp"] / Path(inside).relative_to("/tmp")).mkdir(parents=True)
        root = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        wrapper = [bwrap, "--die-with-parent", *(root if read_only else ["--dev-bind", "/", "/"])]
        wrapper += ["--bind", str(dirs["tmp"]), "/tmp", "--bind", str(dirs["var_tmp"]), "/var/tmp"]
        wrapper += ["--bind", str(dirs["shm"]), "/dev/shm"]
        wrapper += _keep_visible(REPO, dirs, read_only=read_only)
        for inside, outside in ro_binds.items():
            wrapper += ["--ro-bind", str(outside), inside]
        return wrapper, dirs

    yield make
    for shm in shms:
        shutil.rmtree(shm, ignore_errors=True)
