"""Atomic output files: written under a temporary name, fsynced, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from security.model_crypto.exceptions import ModelProtectionError


@contextlib.contextmanager
def atomic_output(
    dst: str | Path, *, force: bool = False, inputs: Sequence[str | Path] = (), mode: int = 0o600
) -> Iterator[BinaryIO]:
    """Write `dst` through a temporary file in the same directory, fsync it, then rename it
    into place; on any error the temporary file is removed and `dst` is untouched.

    Raises:
        ModelProtectionError: `dst` is one of `inputs`, or exists and `force` is false.
    """
    dst = Path(dst)
    for src in inputs:
        if Path(src).exists() and dst.exists() and os.path.samefile(src, dst):
            raise ModelProtectionError(f"refusing to overwrite the input file {src}")
    if dst.is_dir():
        raise ModelProtectionError(f"{dst} is a directory")
    if dst.exists() and not force:
        raise ModelProtectionError(f"{dst} already exists (use --force to replace it)")
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ModelProtectionError(f"cannot write in {dst.parent}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        _move_into_place(tmp, dst, force=force)
        dir_fd = os.open(dst.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _move_into_place(tmp: Path, dst: Path, *, force: bool) -> None:
    if force:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # fails if dst appeared meanwhile: never clobber
    except FileExistsError:
        raise ModelProtectionError(f"{dst} already exists (use --force to replace it)") from None
    except OSError:  # a file system without hard links: check, then rename
        if dst.exists():
            raise ModelProtectionError(
                f"{dst} already exists (use --force to replace it)"
            ) from None
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


def default_mode() -> int:
    """0o666 less the umask, as for any new file (encrypted output need not be private)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    umask = os.umask(0o077)  # no /proc: read it the racy way
    os.umask(umask)
    return 0o666 & ~umask


__all__ = ["atomic_output", "default_mode"]
