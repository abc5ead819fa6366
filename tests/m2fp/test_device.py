"""Device and precision rules: the plain check, and what resolve gives on this machine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from m2fp.device import DeviceError, check, check_pair, precision_of, resolve
from tests.support.paths import REPO


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12"])
@pytest.mark.parametrize("precision", ["auto", "fp32", "bf16"])
def test_well_formed_values_pass(device: str, precision: str) -> None:
    check(device, precision)


@pytest.mark.parametrize(
    ("device", "precision", "match"),
    [
        ("cpu", "fp16", "'fp16' is not supported on the CPU"),
        ("tpu", "auto", "device must be auto, cpu, cuda or cuda:N, not 'tpu'"),
        ("cuda:x", "auto", "device must be"),
        ("cuda:", "auto", "device must be"),
        ("cpu:0", "auto", "device must be"),
        ("CPU", "auto", "device must be"),
        ("", "auto", "device must be"),
        ("auto", "fp8", "precision must be one of auto, fp32, fp16, bf16, not 'fp8'"),
        ("cuda", "float16", "precision must be"),
    ],
)
def test_malformed_or_impossible_values_are_refused(
    device: str, precision: str, match: str
) -> None:
    with pytest.raises(DeviceError, match=match):
        check(device, precision)
    with pytest.raises(DeviceError, match=match):
        resolve(device, precision)


@pytest.mark.parametrize(
    ("dtype", "precision"),
    [(torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")],
)
def test_precision_of_a_dtype_round_trips_through_resolve(
    dtype: torch.dtype, precision: str
) -> None:
    assert precision_of(dtype) == precision
    if precision != "fp16":
        assert resolve("cpu", precision)[1] == dtype


def test_precision_of_other_dtypes_is_refused() -> None:
    with pytest.raises(DeviceError, match="dtype must be float32, float16 or bfloat16"):
        precision_of(torch.float64)


def test_the_pair_rule_knows_only_the_cpu_refusal() -> None:
    for device_type in ("cuda", "auto"):
        check_pair(device_type, "fp16")
    check_pair("cpu", "bf16")
    with pytest.raises(DeviceError, match="'fp16' is not supported on the CPU: use fp32 or bf16"):
        check_pair("cpu", "fp16")


def test_cpu_resolves_to_fp32_by_default_and_keeps_bf16() -> None:
    assert resolve("cpu", "auto") == (torch.device("cpu"), torch.float32)
    assert resolve("cpu", "fp32") == (torch.device("cpu"), torch.float32)
    assert resolve("cpu", "bf16") == (torch.device("cpu"), torch.bfloat16)


def test_auto_follows_this_machine() -> None:
    device, dtype = resolve("auto", "auto")
    if torch.cuda.is_available():
        assert (device.type, dtype) == ("cuda", torch.float16)
        assert resolve("auto", "fp16")[1] == torch.float16
    else:
        assert (device, dtype) == (torch.device("cpu"), torch.float32)
        # auto resolved to the CPU: fp16 is refused with the same message as device=cpu
        with pytest.raises(DeviceError, match="'fp16' is not supported on the CPU"):
            resolve("auto", "fp16")


def test_a_gpu_that_is_not_here_is_refused() -> None:
    with pytest.raises(RuntimeError, match="cuda:99"):
        resolve("cuda:99", "auto")


def test_the_check_imports_no_torch() -> None:
    """settings.py (the gunicorn master, the edge image) runs the check without torch."""
    code = (
        "import sys, m2fp.device; m2fp.device.check('cuda:1', 'bf16');"
        "assert 'torch' not in sys.modules, sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
