"""settings.py: Settings.from_env reads the M2FP_* environment and a malformed or
inconsistent value stops the start with a SettingsError naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import create_app
from settings import Settings, SettingsError


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"rate_limit": "lots"}, "M2FP_RATE_LIMIT"),
        ({"api_keys_required": True}, "M2FP_API_KEYS_REQUIRED"),
        ({"api_keys_file": Path("/nonexistent/keys")}, "M2FP_API_KEYS_FILE"),
        ({"ratelimit_storage": "nosuch://x"}, "M2FP_RATELIMIT_STORAGE"),
        ({"audit_client": "everything"}, "M2FP_AUDIT_CLIENT"),
        ({"device": "cpu", "precision": "fp16"}, "M2FP_PRECISION"),
        ({"device": "tpu"}, "M2FP_DEVICE"),
    ],
)
def test_bad_configuration_stops_the_start(overrides, variable):
    with pytest.raises(SettingsError, match=variable):
        create_app(overrides)


@pytest.mark.parametrize("value", ["-1", "601", "soon"])
def test_drain_seconds_is_validated(value):
    with pytest.raises(SettingsError, match="M2FP_DRAIN_SECONDS"):
        Settings.from_env({"M2FP_DRAIN_SECONDS": value})


def test_drain_seconds_default_and_zero():
    assert Settings.from_env({}).drain_seconds == 5
    assert Settings.from_env({"M2FP_DRAIN_SECONDS": "0"}).drain_seconds == 0


def test_proxy_settings_are_checked():
    env = {"M2FP_TRUSTED_PROXIES": "1", "M2FP_TRUSTED_PROXY_NETWORKS": "10.0.0.5, unix"}
    assert Settings.from_env(env).trusted_proxy_networks == ("10.0.0.5", "unix")
    assert Settings.from_env({}).trusted_proxy_networks is None  # auto: loopback, Unix socket
    for bad in (
        {"M2FP_TRUSTED_PROXY_NETWORKS": "10.0.0.5"},  # networks without proxies: a mistake
        {"M2FP_TRUSTED_PROXIES": "1", "M2FP_TRUSTED_PROXY_NETWORKS": "nginx"},
        {"M2FP_IPV6_CLIENT_PREFIX": "0"},
        {"M2FP_IPV6_CLIENT_PREFIX": "129"},
    ):
        with pytest.raises(SettingsError):
            Settings.from_env(bad)


@pytest.mark.parametrize("target", ["0", "-1", "soon"])
def test_a_target_that_is_not_a_positive_number_stops_the_start(target):
    with pytest.raises(SettingsError, match="M2FP_LATENCY_TARGET_SECONDS"):
        Settings.from_env({"M2FP_LATENCY_TARGET_SECONDS": target})
