"""Device and precision: the one place their values and combinations are checked.

`check(device, precision)` is plain Python (no torch, no CUDA): settings, the command line and
the engine's constructor call it, so a wrong value stops a start before anything is loaded.
`resolve(device, precision)` runs the same check, then asks torch what this machine has; it is
where CUDA is first touched, so the engine calls it in `start()`, in the process that serves.
`check_pair` is the rule on combinations itself, which `optimize_for_inference` applies to the
torch device and dtype it is given.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


class DeviceError(ValueError):
    """A device or precision that is malformed, or a combination that cannot run."""


def check(device: str, precision: str) -> None:
    """Refuse a malformed device or precision, or fp16 asked for on the CPU.

    Args:
        device: 'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'.
        precision: 'auto' (fp16 on CUDA, fp32 on the CPU), 'fp32', 'fp16' or 'bf16'.

    Raises:
        DeviceError: the message names the value and what is allowed.
    """
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise DeviceError(f"device must be {DEVICE_CHOICES}, not {device!r}")
    if precision not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    check_pair(device, precision)


def check_pair(device_type: str, precision: str) -> None:
    """Refuse a combination that cannot run: fp16 on the CPU (slow, and several CPU kernels
    lack it; bf16 works there). `device_type` is 'cpu', 'cuda' or 'auto' (not known yet).

    Raises:
        DeviceError: the one message for it.
    """
    if device_type == "cpu" and precision == "fp16":
        raise DeviceError("precision 'fp16' is not supported on the CPU: use fp32 or bf16")


def precision_of(dtype: torch.dtype) -> str:
    """'fp32', 'fp16' or 'bf16' for a torch dtype (no torch import needed).

    Raises:
        DeviceError: any other dtype.
    """
    name = str(dtype).removeprefix("torch.")
    for precision, dtype_name in _DTYPE_NAMES.items():
        if name == dtype_name:
            return precision
    raise DeviceError(f"dtype must be float32, float16 or bfloat16, got {dtype}")


def resolve(device: str, precision: str) -> tuple[torch.device, torch.dtype]:
    """The torch device and dtype for `device` and `precision` on this machine.

    'auto' picks CUDA when available, else the CPU; 'auto' precision is fp16 on CUDA and fp32
    on the CPU. This is where CUDA is first touched.

    Raises:
        DeviceError: as `check`, also when 'auto' resolved to the CPU and fp16 was asked for.
        RuntimeError: CUDA asked for but not available here, or no such GPU.
    """
    import torch

    check(device, precision)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but CUDA is not available here")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise RuntimeError(f"device {device!r} requested but only {count} GPU(s) are visible")
    check_pair(resolved.type, precision)
    if precision == "auto":
        precision = "fp16" if resolved.type == "cuda" else "fp32"
    if precision == "bf16" and resolved.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeviceError(f"precision 'bf16' is not supported by {resolved}: use fp16 or fp32")
    return resolved, getattr(torch, _DTYPE_NAMES[precision])
