"""Argument checks shared by the public API: each raises ValueError/TypeError naming the argument.

Kept in one place so that every entry point words its errors the same way.
"""
from __future__ import annotations

import numbers

import numpy as np

PROB_ATOL = 1e-9  # how far a probability vector may be from summing to 1


def positive_float(name: str, value) -> float:
    """Return value as a finite float > 0, else raise naming `name`."""
    value = real_float(name, value)
    if not value > 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def nonnegative_float(name: str, value) -> float:
    """Return value as a finite float >= 0, else raise naming `name`."""
    value = real_float(name, value)
    if not value >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def _is_torch_tensor(value) -> bool:
    """True for a torch.Tensor, without importing torch here."""
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def real_float(name: str, value) -> float:
    """Return value as a finite Python float, else raise naming `name` (0-d numpy/torch scalars are accepted)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if _is_torch_tensor(value) and value.ndim == 0 and not value.dtype.is_complex \
                and str(value.dtype) != "torch.bool":
            value = value.item()
        elif isinstance(value, np.ndarray) and value.ndim == 0 and np.issubdtype(value.dtype, np.number) \
                and not np.issubdtype(value.dtype, np.complexfloating):
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value


def positive_int(name: str, value, minimum: int = 1) -> int:
    """Return value as an int >= minimum, else raise naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def float_array(name: str, value, ndim: int | None = None, shape: tuple | None = None) -> np.ndarray:
    """Return a finite float64 copy of `value`, checking its dimension and shape.

    Any real dtype is upcast (float16 and torch bfloat16 included); complex and string input is
    refused rather than silently cast.
    """
    if _is_torch_tensor(value):
        if value.dtype.is_complex:
            raise TypeError(f"{name} must be a real array, got a complex tensor")
        value = value.detach().cpu().double()          # numpy has no bfloat16: upcast in torch first
    try:
        probe = np.asarray(value)
        # Complex would lose its imaginary part and numeric strings would parse: refuse both.
        bad_kind = np.iscomplexobj(probe) or probe.dtype.kind in "USV"
        arr = None if bad_kind else np.array(probe, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:     # ragged lists, objects that are not numbers
        raise TypeError(f"{name} must be a real numeric array, got {type(value).__name__}") from exc
    if arr is None:
        raise TypeError(f"{name} must be a real numeric array, got dtype {probe.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-d array, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite; it holds {int(np.sum(~np.isfinite(arr)))} NaN/inf entries")
    return arr


def probability_rows(name: str, arr: np.ndarray) -> np.ndarray:
    """Check that every row (last axis) of arr is strictly positive and sums to 1 within PROB_ATOL."""
    if np.any(arr <= 0):
        raise ValueError(f"{name} must be strictly positive; found {int(np.sum(arr <= 0))} entries <= 0")
    off = np.max(np.abs(arr.sum(axis=-1) - 1.0))
    if off > PROB_ATOL:
        raise ValueError(f"{name} rows must sum to 1 (within {PROB_ATOL:g}); off by up to {off:.3g}")
    return arr


def index_array(name: str, value, upper: int) -> np.ndarray:
    """Return an int64 1-d array with entries in [0, upper), else raise naming `name`."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-d integer array, got shape {arr.shape}")
    if arr.size == 0:
        arr = arr.astype(np.int64)          # np.asarray([]) is float64: an empty list is not a dtype error
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= upper):
        raise ValueError(f"{name} entries must lie in [0, {upper}), got range [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64, copy=False)


def describe(value) -> str:
    """A short one-line description of a bad value for an error message: its repr, or its type for anything big."""
    if value is None or isinstance(value, (str, numbers.Number)):
        text = " ".join(repr(value).split())
        return text if len(text) <= 80 else text[:77] + "..."
    return type(value).__name__      # the repr of a stray array would fill the screen


def choice(name: str, value, options) -> str:
    """Return value if it is one of the named options, else list them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {sorted(options)}, got {describe(value)}")
    return value


def rng_from(seed) -> np.random.Generator:
    """An explicit np.random.Generator from an int seed, SeedSequence or Generator (None is refused)."""
    if seed is None:
        raise TypeError("seed must be given explicitly (an int, SeedSequence or np.random.Generator)")
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool):
        raise TypeError("seed must be an int, SeedSequence or np.random.Generator, got bool")
    if isinstance(seed, numbers.Integral):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed}")
        return np.random.default_rng(int(seed))
    if isinstance(seed, np.random.SeedSequence):
        return np.random.default_rng(seed)
    raise TypeError(f"seed must be an int, SeedSequence or np.random.Generator, got {type(seed).__name__}")
