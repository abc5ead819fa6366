"""nginx's error log without anything a client sent: `nginx -e stderr ... 2>&1 | python -m
nginx.log_filter` (scripts/run and the edge image's entry point run nginx this way).

nginx appends the request to every message it logs while serving one, and no directive turns
that off: `, client: 203.0.113.7, server: _, request: "POST /api/v1/parse?api_key=... HTTP/1.1",
upstream: "http://127.0.0.1:8000/api/v1/parse?api_key=...", host: "...", referrer: "..."`.
A 413, an unreachable app, a timed-out upstream each wrote the query string (API keys and all)
and the referrer. This filter keeps each line's time, level, process and connection number
and nginx's own words, and drops that context: everything from `, client: ` on, and anything
nginx quoted from the request inside the message (`open() "/static/<path>" failed`).

The standard library only: it runs in the edge image beside nginx.render.
"""

from __future__ import annotations

import signal
import sys
from typing import BinaryIO

CONTEXT = ", client: "
WITHHELD = " (request details withheld)"


def redact(line: str) -> str:
    """`line` (one error-log line, without its newline) without what came from a request."""
    message, sep, _ = line.partition(CONTEXT)
    if not sep:
        return line  # not about a request: start, reload, worker exits
    first, last = message.find('"'), message.rfind('"')
    if first != -1:
        # A quoted span may hold a path or header from the request, quotes and `, client: `
        # included: keep nginx's text on either side of the outermost quotes.
        tail = message[last + 1 :] if last > first else ""
        message = message[:first] + '"..."' + tail
    return message + WITHHELD


def run(source: BinaryIO, sink: BinaryIO) -> None:
    """Filter `source` into `sink` line by line until the end, flushing each line."""
    for raw in iter(source.readline, b""):
        line = raw.decode("latin-1").rstrip("\n")
        sink.write((redact(line) + "\n").encode("latin-1", "replace"))
        sink.flush()


def main() -> int:
    # Ctrl-C reaches the whole process group: go on until nginx, which logs its own exit,
    # closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    run(sys.stdin.buffer, sys.stderr.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
