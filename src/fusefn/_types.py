"""Type tests shared across fusefn without importing torch."""

from __future__ import annotations


def is_tensor(obj) -> bool:
    """Whether ``obj`` is a ``torch.Tensor`` (checked without importing torch)."""
    mod = type(obj).__module__
    return mod.startswith("torch") and hasattr(obj, "detach") and hasattr(obj, "dtype")
