"""Abuse control for the parse endpoint: API keys, rate limits and bans (no Flask here: the
hooks and flask-limiter are wired in `web.gate`).

Who a request is (`Identity`): the API key's id when the client presents a valid key, else the
client address, normalised (ports dropped, IPv4-mapped IPv6 unmapped, IPv6 by its
M2FP_IPV6_CLIENT_PREFIX network, the block one host usually owns; what is no address is
"unknown", never a bucket of its own). The address is `remote_addr` as
`security.client_address` resolved it: X-Forwarded-For only from a peer in the trusted proxy
networks, so behind nginx each client is itself and not nginx, and whoever reaches the app's
port directly is only itself, whatever header it sends.

- API keys: `Authorization: Bearer <key>` or `X-API-Key: <key>`, looked up in the hashed keys
  file (`security.api_keys`). With M2FP_API_KEYS_REQUIRED no key → 401; an unknown key → 403.
- Rate limit: M2FP_RATE_LIMIT per address; a key's own limit (or M2FP_RATE_LIMIT) per key.
  Moving window, so "5 per minute" means at most 5 in any 60 s. 429 + Retry-After.
- Bans: M2FP_BAN_AFTER invalid uploads (what `security.uploads` rejects: 415 type, 422 decode,
  413 pixels) within M2FP_BAN_WINDOW_SECONDS → 429 `temporarily_banned` for M2FP_BAN_SECONDS.

Limits and bans live in the same `limits` storage: memory:// (one process) or redis:// (shared
by every worker and machine). An unreachable storage fails closed: 503, never unlimited;
`StorageHealth` tells the operator once when it goes and once when it is back.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from limits import parse_many
from limits.storage import Storage

from security.client_address import client_key
from security.errors import BadRequest, Banned, Forbidden, Unauthorized
from settings import Settings, SettingsError

log = logging.getLogger("security.abuse")


def client_bucket(address: str | None, ipv6_prefix: int = 64) -> str:
    """The rate-limit subject for a client address: IPv4 as is, IPv6 by its `/ipv6_prefix`,
    "unknown" for what is no address (`security.client_address.client_key`)."""
    return client_key(address, ipv6_prefix)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a request carries, or None.

    Other Authorization schemes (`Basic` from an nginx `auth_basic` in front...) are not ours
    and are ignored.

    Raises:
        BadRequest: `Authorization: Bearer` without a key, or two different keys.
    """
    keys = []
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        if not token.strip():
            raise BadRequest("The Authorization header must be 'Bearer <API key>'.")
        keys.append(token.strip())
    header_key = headers.get("X-API-Key")
    if header_key is not None and header_key.strip():
        keys.append(header_key.strip())
    if len(set(keys)) > 1:
        raise BadRequest("Authorization and X-API-Key carry different keys.")
    return keys[0] if keys else None


@dataclass(frozen=True)
class Identity:
    subject: str  # "key:<id>" or "ip:<IPv4 address or IPv6 network>": the rate-limit and ban bucket
    limit: str  # the rate limit of this subject
    api_key_id: str | None = None


class Gatekeeper:
    """Decides who a request is: API key lookup, or the client address."""

    def __init__(
        self,
        *,
        default_limit: str,
        keys: Any = None,
        keys_required: bool = False,
        ipv6_prefix: int = 64,
    ):
        self.default_limit = default_limit
        self.keys = keys  # security.api_keys.ApiKeyStore or None
        self.keys_required = keys_required
        self.ipv6_prefix = ipv6_prefix  # an IPv6 client is its network of this prefix

    def identify(self, headers: Mapping[str, str], address: str | None) -> Identity:
        """Raises Unauthorized (no key but one is required), Forbidden (unknown key)."""
        key = presented_key(headers)
        if key is None:
            if self.keys_required:
                raise Unauthorized(
                    "An API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'."
                )
            return self._by_address(address)
        if self.keys is None:  # no keys file: keys mean nothing, the address counts
            return self._by_address(address)
        found = self.keys.lookup(key)  # constant time; over-long values are no key
        if found is None:
            raise Forbidden("This API key is not valid.")
        return Identity(f"key:{found.id}", found.limit or self.default_limit, found.id)

    def _by_address(self, address: str | None) -> Identity:
        return Identity(f"ip:{client_bucket(address, self.ipv6_prefix)}", self.default_limit)


class BanList:
    """Temporary bans after repeated invalid uploads, in a `limits` storage."""

    def __init__(self, storage: Storage, *, after: int, window_s: int, ban_s: int) -> None:
        self.storage = storage
        self.after, self.window_s, self.ban_s = after, window_s, ban_s

    def retry_after(self, subject: str) -> int | None:
        """Seconds left on `subject`'s ban, or None when it is not banned."""
        key = f"m2fp-ban/{subject}"
        if self.storage.get(key) <= 0:
            return None
        return max(1, math.ceil(self.storage.get_expiry(key) - time.time()))

    def strike(self, subject: str) -> bool:
        """Count one invalid upload; True when this one earns the ban."""
        strikes = self.storage.incr(f"m2fp-strikes/{subject}", self.window_s)
        if strikes < self.after:
            return False
        self.storage.incr(f"m2fp-ban/{subject}", self.ban_s)
        self.storage.clear(f"m2fp-strikes/{subject}")
        # Who: the audit line of this request, in the client form the operator chose.
        log.warning("a client is banned for %d s after %d invalid uploads", self.ban_s, strikes)
        return True


class StorageHealth:
    """Whether the rate-limit storage answered the last time anyone used it, per process.

    Every use reports here (`failed` or `answered`); only a change is logged: one ERROR line
    when an outage starts, one WARNING line when the storage answers again. `on_change(up)` runs
    on each change and once at the start (the metrics gauge)."""

    def __init__(self, on_change: Callable[[bool], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda up: None)
        self._down_since: float | None = None
        self._on_change(True)

    @property
    def up(self) -> bool:
        return self._down_since is None

    def failed(self, error: BaseException | None) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._on_change(False)
        # The error's type only: a connection error's text can carry the storage URL.
        log.error(
            "rate-limit storage unreachable (%s): refusing protected requests with 503 until it"
            " answers",
            type(error).__name__ if error is not None else "no answer",
        )

    def answered(self) -> None:
        with self._lock:
            if self._down_since is None:
                return
            outage = time.monotonic() - self._down_since
            self._down_since = None
            self._on_change(True)
        log.warning("rate-limit storage reachable again after %.1f s", outage)


def load_keys(settings: Settings) -> Any:
    """The API key store of M2FP_API_KEYS_FILE (None without one), every limit checked."""
    if settings.api_keys_file is None:
        if settings.api_keys_required:
            raise SettingsError("M2FP_API_KEYS_REQUIRED is set but M2FP_API_KEYS_FILE is not")
        return None
    from security.api_keys import ApiKeyStore

    path = Path(settings.api_keys_file)
    try:
        store = ApiKeyStore.from_file(path)
    except (OSError, ValueError) as exc:
        raise SettingsError(f"M2FP_API_KEYS_FILE={path}: {exc}") from None
    return store


def check_limit(name: str, value: str) -> str:
    try:
        if not parse_many(value):
            raise ValueError("no limit")
    except ValueError:
        raise SettingsError(
            f"{name}={value!r} is not a rate limit such as '5 per minute'"
        ) from None
    return value


class AbuseControl:
    """The limiter (flask-limiter's, made by `web.gate`), the gatekeeper and the ban list of
    one app (`app.extensions["m2fp_abuse"]`)."""

    def __init__(
        self,
        limiter: Any,
        gatekeeper: Gatekeeper,
        bans: BanList,
        health: StorageHealth | None = None,
    ) -> None:
        self.limiter, self.gatekeeper, self.bans = limiter, gatekeeper, bans
        self.health = health or StorageHealth()

    @property
    def storage(self) -> Storage:
        return self.limiter.storage

    def storage_reachable(self) -> bool:
        """Ask the storage now (`/readyz`); the answer goes to `health` too."""
        if self.storage.check():
            self.health.answered()
            return True
        self.health.failed(None)
        return False

    def refuse_if_banned(self, identity: Identity) -> None:
        """Raises Banned (429, Retry-After: the rest of the ban) while `identity` is banned."""
        retry = self.bans.retry_after(identity.subject)
        if retry is not None:
            raise Banned(retry_after=retry)


__all__ = [
    "AbuseControl",
    "BanList",
    "Gatekeeper",
    "Identity",
    "StorageHealth",
    "check_limit",
    "client_bucket",
    "load_keys",
    "presented_key",
]
