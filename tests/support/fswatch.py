"""Watch directory trees with inotify and report what was created or written meanwhile."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

# Everything that creates, writes, renames into, deletes or re-permissions a file; IN_OPEN is
# left out (every read opens) but an O_TMPFILE shows up as IN_MODIFY on its directory.
WRITE_EVENTS = (
    flags.CREATE
    | flags.MODIFY
    | flags.CLOSE_WRITE
    | flags.MOVED_TO
    | flags.MOVED_FROM
    | flags.DELETE
    | flags.ATTRIB
)


@dataclass(frozen=True)
class Event:
    path: str
    kinds: tuple[str, ...]


class TreeWatch:
    def __init__(self) -> None:
        self._inotify = INotify()
        self._dirs: dict[int, Path] = {}

    def add(self, root: str | Path, *, recursive: bool = True, max_dirs: int = 20000) -> None:
        root = Path(root)
        self._add_one(root)
        if not recursive:
            return
        for current, dirnames, _ in os.walk(root):
            dirnames[:] = [d for d in dirnames if not Path(current, d).is_symlink()]
            for name in dirnames:
                if len(self._dirs) >= max_dirs:
                    raise RuntimeError(f"too many directories under {root}")
                self._add_one(Path(current, name))

    def _add_one(self, directory: Path) -> None:
        try:
            wd = self._inotify.add_watch(str(directory), WRITE_EVENTS)
        except (FileNotFoundError, PermissionError):
            return
        self._dirs[wd] = directory

    def drain(self, timeout_ms: int = 200) -> list[Event]:
        """Every event since the last call (waiting `timeout_ms` for late ones)."""
        events = []
        while True:
            batch = self._inotify.read(timeout=timeout_ms)
            if not batch:
                return events
            for event in batch:
                directory = self._dirs.get(event.wd)
                if directory is None:
                    continue
                kinds = tuple(str(f.name) for f in flags.from_mask(event.mask))
                if "IGNORED" in kinds:
                    continue
                events.append(Event(str(directory / event.name), kinds))

    def close(self) -> None:
        self._inotify.close()


def unexpected(events: Iterable[Event], allowed: Iterable[str] = ()) -> list[Event]:
    """Events whose path contains none of the `allowed` fragments."""
    allowed = tuple(allowed)
    return [e for e in events if not any(fragment in e.path for fragment in allowed)]
