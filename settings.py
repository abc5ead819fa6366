"""Service settings: every `M2FP_*` environment variable, read once into a typed, frozen object.

Every field has a default that works on a single machine. `Settings.from_env()` validates the
values and raises `SettingsError` naming the variable, so a typo stops the start with a clear
message instead of surfacing as a strange failure later.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from http_contract import TimeLimits, time_limits
from m2fp import device as device_rules

PREFIX = "M2FP_"
DEFAULT_MODEL_DIR = Path("models/cv_resnet101_image-multiple-human-parsing")
# M2FP_TRUSTED_PROXY_NETWORKS=auto: nginx on this machine, over loopback or gunicorn's Unix
# socket ("unix": a peer with no address); security/client_address.py reads them.
DEFAULT_PROXY_NETWORKS = ("127.0.0.1/32", "::1/128", "unix")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    # Model
    model_dir: Path = DEFAULT_MODEL_DIR
    weights_sha256: str | None = None
    weights_key_file: Path | None = None
    # The key itself (hex, base64 or PEM), used when no key file is set; kept out of repr.
    weights_key: str | None = field(default=None, repr=False)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | fp16 | bf16
    warmup: bool = True
    # Engine
    batch_max: int | None = None  # None (`auto`): 4 on CUDA, 1 on the CPU
    batch_wait_ms: float = 5.0
    queue_max: int = 16
    # Seconds within which an admitted parse is expected to finish; every other time limit
    # (the engine's deadline, nginx's and gunicorn's timeouts) follows from it.
    latency_target_seconds: float = 60.0
    # Uploads
    max_upload_mb: float = 10.0
    max_pixels: int = 24_000_000  # see docs/uploads.md, "Decode memory"
    max_side: int = 1920
    decode_slots: int | None = None  # None (`auto`): the CPUs this process may use
    decode_memory_mb: float | None = None  # None (`auto`): a quarter of the memory limit
    # Bytes after the image (motion-photo videos, phone trailers): dropped undecoded (true) or
    # refused with 415 (false). docs/uploads.md, "Data after the image".
    allow_trailing_data: bool = True
    # Abuse control
    rate_limit: str = "5 per minute"
    ratelimit_storage: str = "memory://"
    ban_after: int = 3
    ban_window_seconds: int = 600
    ban_seconds: int = 3600
    api_keys_file: Path | None = None
    api_keys_required: bool = False
    # X-Forwarded-For is read (at most this many entries) only from a peer in these networks
    # (None, `auto`: loopback and the Unix socket): security/client_address.py
    trusted_proxies: int = 0
    trusted_proxy_networks: tuple[str, ...] | None = None
    ipv6_client_prefix: int = 64  # an IPv6 client is its /64 for limits and bans
    cors_origins: tuple[str, ...] = ()
    # Observability
    audit_client: str = "truncated"  # full | truncated | hash
    audit_hash_key: str | None = None
    metrics_allow: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    # Overload shedding: above this fraction of the memory limit, /readyz and parses answer 503.
    memory_shed_fraction: float = 0.9
    memory_limit_mb: float | None = None  # None: the cgroup limit, else the machine's RAM
    # Shutdown: seconds a stopping worker keeps serving while /readyz answers 503 `draining`.
    drain_seconds: float = 5.0
    # Pages
    kiosk_idle_seconds: int = 60
    # Without a camera, the kiosk may offer the OS file dialog: off, since on a public kiosk it
    # lets a stranger browse the machine's files.
    kiosk_file_fallback: bool = False
    kiosk_notice: str = (
        "Your photo is processed in memory and never stored. The result disappears when you "
        "leave or after a minute without a touch."
    )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def proxy_networks(self) -> tuple[str, ...]:
        """M2FP_TRUSTED_PROXY_NETWORKS, `auto` worked out."""
        networks = self.trusted_proxy_networks
        return DEFAULT_PROXY_NETWORKS if networks is None else networks

    @property
    def time_limits(self) -> TimeLimits:
        """The engine's deadline and the proxies' timeouts for `latency_target_seconds`."""
        return time_limits(self.latency_target_seconds)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Read `M2FP_<FIELD>` for every field, then apply `overrides` (already typed values)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = PREFIX + f.name.upper()
            raw = environ.get(name)
            if raw is None or raw.strip() == "":
                continue
            values[f.name] = _parse(name, f.type, raw.strip())
        unknown = set(overrides or {}) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
        values.update(overrides or {})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _choice("M2FP_AUDIT_CLIENT", self.audit_client, ("full", "truncated", "hash"))
        try:
            device_rules.check(self.device, self.precision)
        except device_rules.DeviceError as exc:
            raise SettingsError(f"M2FP_DEVICE, M2FP_PRECISION: {exc}") from None
        for name in ("batch_max", "queue_max", "max_pixels", "max_side", "ban_after"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SettingsError(f"{PREFIX}{name.upper()} must be at least 1")
        if not self.latency_target_seconds > 0:
            raise SettingsError("M2FP_LATENCY_TARGET_SECONDS must be positive")
        if self.max_upload_mb <= 0:
            raise SettingsError("M2FP_MAX_UPLOAD_MB must be positive")
        if self.decode_slots is not None and self.decode_slots < 1:
            raise SettingsError("M2FP_DECODE_SLOTS must be at least 1 (or auto)")
        if self.decode_memory_mb is not None and self.decode_memory_mb <= 0:
            raise SettingsError("M2FP_DECODE_MEMORY_MB must be positive (or auto)")
        if self.trusted_proxies < 0:
            raise SettingsError("M2FP_TRUSTED_PROXIES must be 0 or more")
        if self.trusted_proxy_networks is not None and not self.trusted_proxies:
            raise SettingsError(
                "M2FP_TRUSTED_PROXY_NETWORKS is set but M2FP_TRUSTED_PROXIES is 0: set how many"
                " proxies append to X-Forwarded-For (1 for nginx)"
            )
        for network in self.proxy_networks:
            try:
                if network != "unix":
                    ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise SettingsError(f"M2FP_TRUSTED_PROXY_NETWORKS: {exc}") from None
        if not 1 <= self.ipv6_client_prefix <= 128:
            raise SettingsError("M2FP_IPV6_CLIENT_PREFIX must be between 1 and 128")
        if not 0 <= self.drain_seconds <= 600:
            raise SettingsError("M2FP_DRAIN_SECONDS must be between 0 and 600")
        if not 0 < self.memory_shed_fraction <= 1:
            raise SettingsError("M2FP_MEMORY_SHED_FRACTION must be in (0, 1]")
        if self.weights_sha256 is not None:
            digest = self.weights_sha256.lower()
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise SettingsError("M2FP_WEIGHTS_SHA256 must be 64 hexadecimal characters")
        for network in self.metrics_allow:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise SettingsError(f"M2FP_METRICS_ALLOW: {exc}") from None


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SettingsError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    if kind.endswith("| None") and raw.lower() == "auto":
        return None  # an optional setting's "auto" is its default, worked out at start
    try:
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind.startswith("bool"):
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
        return raw
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r}: {exc}") from None


__all__ = ["DEFAULT_MODEL_DIR", "DEFAULT_PROXY_NETWORKS", "Settings", "SettingsError"]
