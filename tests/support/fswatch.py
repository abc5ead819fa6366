"""Watch the filesystem while the servers work, and report what was created or written.

- `TreeWatch`: inotify on chosen directory trees: every event there, whoever caused it.
- `DiskWatch` (`disk_watch`): fatrace (fanotify) on every mounted filesystem, with the id of
  the process that wrote, plus a `TreeWatch` on chosen directories.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from inotify_simple import INotify, flags

FATRACE = "/usr/sbin/fatrace"

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
    """inotify watches on directories (`add`), reporting `events` (default: every write)."""

    def __init__(self, events: int = WRITE_EVENTS) -> None:
        self._inotify = INotify()
        self._events = events
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
            wd = self._inotify.add_watch(str(directory), self._events)
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


_FATRACE_LINE = re.compile(r"^(.*)\((\d+)\): (\S+) +(.*)$")


@dataclass
class DiskWatch:
    """fatrace (fanotify: every mounted filesystem, with the writing process id) running while
    requests are served. `writes(pids)` lists the files those processes created or wrote.
    Beside it, a `TreeWatch` on chosen directories (nginx's temp paths) that also counts opens:
    `dir_events` lists anything opened, created, written, moved or deleted there, whoever did
    it."""

    log: Path
    proc: subprocess.Popen | None = None
    events: list[tuple[str, int, str, str]] = field(default_factory=list)
    tree: TreeWatch = field(default_factory=lambda: TreeWatch(WRITE_EVENTS | flags.OPEN))
    dir_events: list[Event] = field(default_factory=list)

    def watch_dirs(self, directories: Iterable[Path]) -> None:
        for directory in directories:
            if not Path(directory).is_dir():  # TreeWatch skips what is missing: say so here
                raise FileNotFoundError(f"no directory to watch at {directory}")
            self.tree.add(directory, recursive=False)

    def start(self, marker_dir: Path) -> None:
        self.proc = subprocess.Popen(
            [FATRACE, "-o", str(self.log)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        # fatrace says nothing when it is ready: write a marker until it shows up.
        marker = marker_dir / f"fatrace-ready-{os.getpid()}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            marker.write_text("ready")
            time.sleep(0.1)
            if self.log.exists() and marker.name in self.log.read_text(errors="replace"):
                marker.unlink()
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"fatrace failed: {self.proc.stderr.read().decode()}")
        raise TimeoutError("fatrace did not report a marker write within 15 s")

    def stop(self) -> list[tuple[str, int, str, str]]:
        if self.proc is not None and self.proc.poll() is None:
            time.sleep(0.3)  # let the last events arrive
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        self.dir_events = self.tree.drain(timeout_ms=0)
        self.tree.close()
        self.events = []
        for line in self.log.read_text(errors="replace").splitlines():
            m = _FATRACE_LINE.match(line)
            if m:
                self.events.append((m.group(1), int(m.group(2)), m.group(3), m.group(4)))
        return self.events

    def writes(self, pids: set[int], allowed: Iterable[Path] = ()) -> list[str]:
        """Events by `pids` that create, write or move a file, except on the `allowed` files
        (the logs). Read-only opens are not listed."""
        allowed_names = {str(p) for p in allowed}
        found = []
        for comm, pid, kinds, path in self.events:
            if pid not in pids or not set(kinds) & set("W+>"):
                continue
            if path in allowed_names:
                continue
            found.append(f"{comm}({pid}): {kinds} {path}")
        return found


@contextlib.contextmanager
def disk_watch(directory: Path, inotify_dirs: Iterable[Path] = ()) -> Iterator[DiskWatch]:
    """A `DiskWatch` logging to `directory/fatrace.log`, with inotify on `inotify_dirs`."""
    watch = DiskWatch(directory / "fatrace.log")
    watch.watch_dirs(inotify_dirs)
    watch.start(directory)
    try:
        yield watch
    finally:
        watch.stop()
