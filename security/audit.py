"""The audit log: exactly one JSON line per request on stdout.

Fields: time, request_id, client, api_key (the key's id), method, path (never the query
string), status, bytes_in, image ({width, height} before the working-copy downscale), persons,
latency_ms, outcome ("ok" or the error code), trailer_bytes (bytes after the image that were
dropped undecoded, such as a motion photo's video: 0 for none, null when no image was decoded).
Never image content, file names, key material or query strings. The client address
(normalised: no port, IPv4-mapped IPv6 unmapped) is written
`full`, `truncated` (IPv4 /24, IPv6 /48) or as a keyed `hash` (HMAC-SHA256 with
M2FP_AUDIT_HASH_KEY, 16 hex digits), per M2FP_AUDIT_CLIENT.

Nothing here knows Flask or the web package: `web.request_record` hands `AuditLog.emit` the
fields of each request's record once the response is final.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from security.client_address import parse_address

LOGGER_NAME = "m2fp.audit"
_MAX_PATH = 200


def client_label(address: str | None, mode: str, hash_key: bytes) -> str | None:
    """The client address as the audit log writes it (`mode`: full | truncated | hash),
    normalised first (`::ffff:203.0.113.7` and `203.0.113.7:5555` are `203.0.113.7`); what is
    no address is "unknown"."""
    if not address:
        return None
    ip = parse_address(address)
    if ip is None:
        return "unknown"
    if mode == "full":
        return str(ip)
    if mode == "hash":
        return hmac.new(hash_key, str(ip).encode(), hashlib.sha256).hexdigest()[:16]
    prefix = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False).network_address)


class CurrentStream(logging.StreamHandler):
    """Writes to whatever `sys.stdout` / `sys.stderr` is when a record is emitted (so tests
    that swap them, and gunicorn's redirections, see every line)."""

    def __init__(self, name: str = "stdout") -> None:
        self._which = name
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return getattr(sys, self._which)

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def audit_logger() -> logging.Logger:
    """The `m2fp.audit` logger: JSON lines on stdout, not propagated to the operator log."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, CurrentStream) for h in logger.handlers):
        handler = CurrentStream("stdout")
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


class AuditLog:
    def __init__(self, *, client_mode: str = "truncated", hash_key: str | None = None) -> None:
        self.client_mode = client_mode
        # Without a configured key the hash is stable for this process only.
        self._hash_key = hash_key.encode() if hash_key else secrets.token_bytes(32)
        if client_mode == "hash" and not hash_key:
            logging.getLogger("security.audit").warning(
                "M2FP_AUDIT_CLIENT=hash without M2FP_AUDIT_HASH_KEY: client hashes use a random"
                " key of this process and will not match across workers or restarts"
            )
        self._logger = audit_logger()

    def emit(
        self,
        *,
        request_id: str,
        client: str | None,
        method: str,
        path: str,
        status: int,
        latency_s: float,
        api_key: str | None = None,
        bytes_in: int = 0,
        image_size: tuple[int, int] | None = None,
        persons: int | None = None,
        outcome: str = "ok",
        trailer_bytes: int | None = None,
    ) -> dict[str, Any]:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": request_id,
            "client": client_label(client, self.client_mode, self._hash_key),
            "api_key": api_key,
            "method": method[:16],
            "path": path[:_MAX_PATH],
            "status": status,
            "bytes_in": bytes_in,
            "image": {"width": image_size[0], "height": image_size[1]} if image_size else None,
            "persons": persons,
            "latency_ms": round(latency_s * 1000.0, 1),
            "outcome": outcome,
            "trailer_bytes": trailer_bytes,
        }
        self._logger.info(json.dumps(record, separators=(",", ":"), ensure_ascii=True))
        return record


__all__ = ["AuditLog", "CurrentStream", "audit_logger", "client_label"]
