"""What became of each input of a batch (`Outcome`, its state) and of the whole (`Report`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Outcome states. Only FAILED makes the batch fail; EXISTS is the resume case.
WRITTEN, EXISTS, FAILED, CANCELLED = "written", "exists", "failed", "cancelled"


@dataclass(frozen=True)
class Outcome:
    """What became of one input. `code` and `message` are the API's (or, with `status` None,
    the client's own: `unsupported_media_type` checked here, `unreadable`, `connection_failed`,
    `client_error`, `output_conflict`, `write_failed`, `cancelled`)."""

    source: Path
    state: str
    target: Path | None = None
    status: int | None = None
    code: str | None = None
    message: str | None = None
    request_id: str | None = None

    def describe(self) -> str:
        if self.state == WRITTEN:
            return f"{self.source} → {self.target}"
        if self.state == EXISTS:
            return f"{self.source}: {self.target} exists (--overwrite replaces it)"
        where = f"{self.status} " if self.status is not None else ""
        text = f"{self.source}: {where}{self.code}: {self.message}"
        return text + (f" (request id {self.request_id})" if self.request_id else "")


@dataclass
class Report:
    """Every input's outcome (conflicts first, then in plan order), the files skipped in
    folders, and why the batch ended early, if it did."""

    outcomes: list[Outcome]
    skipped: list[Path]
    seconds: float
    interrupted: bool = False
    stopped_because: str | None = None
    unreachable: bool = False  # stopped because the service could not be reached

    def count(self, state: str) -> int:
        return sum(o.state == state for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.state in (WRITTEN, EXISTS) for o in self.outcomes)
