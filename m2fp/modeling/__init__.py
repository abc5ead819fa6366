"""M2FP network modules (pure PyTorch)."""

from m2fp.modeling.m2fp import M2FP, M2FPOutput

__all__ = ["M2FP", "M2FPOutput"]
