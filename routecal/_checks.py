"""Input validation shared by every public function: bad input raises ValueError naming the argument.

All checks run on host (numpy) before anything is jit-compiled, so errors are clear and early.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def as_array(x: Any, name: str, *, ndim: int | None = None, dtype: Any = np.float64) -> np.ndarray:
    """Converts `x` to a numpy array of `dtype`, checking its rank and that it is finite.

    NaN and inf are refused whatever the float type: float16/32/64 and the ml_dtypes types jax uses
    (bfloat16, float8_*; numpy kind 'V'), which are checked after an exact cast to float32.

    Raises:
      ValueError: naming `name` if `x` has the wrong rank, is empty, or holds NaN/inf.
    """
    try:
        arr = np.asarray(x)
    except Exception as e:  # pragma: no cover - exotic inputs
        raise ValueError(f"{name}: cannot convert to an array ({e})") from e
    if arr.dtype.kind == "V" and jnp.issubdtype(arr.dtype, jnp.floating):
        arr = arr.astype(np.float32)  # bfloat16 / float8 (ml_dtypes, kind 'V'): checkable as float32
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name}: is empty")
    if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name}: contains {n_bad} NaN/inf value(s)")
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    return arr


def check_unit_interval(x: np.ndarray, name: str) -> np.ndarray:
    """Raises ValueError unless every entry of `x` lies in [0, 1]."""
    if np.any(x < 0) or np.any(x > 1):
        raise ValueError(f"{name}: values must lie in [0, 1]; got range [{x.min()}, {x.max()}]")
    return x


def check_binary(x: Any, name: str) -> np.ndarray:
    """Returns `x` as a float64 0/1 vector; raises ValueError unless every entry is 0 or 1."""
    arr = as_array(x, name, ndim=1, dtype=None)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"{name}: must hold only 0/1 (or booleans)")
    return arr.astype(np.float64)


def check_probs(probs: Any, name: str = "probs", *, atol: float = 1e-3) -> np.ndarray:
    """Checks a `[N, C]` probability matrix: finite, in [0, 1], rows summing to 1 within `atol`."""
    p = as_array(probs, name, ndim=2)
    check_unit_interval(p, name)
    s = p.sum(axis=1)
    bad = np.abs(s - 1.0) > atol
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(
            f"{name}: rows must sum to 1 (within {atol}); row {i} sums to {s[i]:.6f} "
            f"({int(bad.sum())} bad rows)"
        )
    return p


def check_labels(labels: Any, n_classes: int, name: str = "labels") -> np.ndarray:
    """Checks integer labels in [0, n_classes)."""
    y = as_array(labels, name, ndim=1, dtype=None)
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name}: must be integers, got dtype {y.dtype}")
    if np.any(y < 0) or np.any(y >= n_classes):
        raise ValueError(f"{name}: out of range [0, {n_classes}); got min {y.min()}, max {y.max()}")
    return y.astype(np.int32)


def check_same_length(**arrays: np.ndarray) -> int:
    """Raises ValueError naming the arguments unless all arrays share their first dimension."""
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}={n}" for k, n in lengths.items())
        raise ValueError(f"mismatched lengths: {desc}")
    return next(iter(lengths.values()))


def check_positive_int(x: Any, name: str, *, minimum: int = 1) -> int:
    """Raises ValueError unless `x` is an integer >= `minimum`."""
    if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {x!r}")
    return int(x)


def check_nonnegative(x: Any, name: str) -> float:
    """Returns `x` as a float; raises ValueError unless it is a finite number >= 0."""
    try:
        value = float(x)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: must be a number >= 0, got {x!r}") from e
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{name}: must be a finite number >= 0, got {x!r}")
    return value


def check_key(key: Any, name: str = "key") -> jax.Array:
    """A jax PRNG key from `key`: a typed key (`jax.random.key`), a raw uint32 [2] key
    (`jax.random.PRNGKey`), or an integer seed (accepted: `jax.random.key(seed)`).

    Raises:
      ValueError: naming `name` for anything else (floats, strings, None, batches of keys).
    """
    if isinstance(key, bool):
        raise ValueError(f"{name}: expected a jax PRNG key or an integer seed, got {key!r}")
    if isinstance(key, int | np.integer):
        if not 0 <= int(key) < 2**63:
            raise ValueError(f"{name}: an integer seed must lie in [0, 2**63), got {key}")
        return jax.random.key(int(key))
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name}: expected one PRNG key, got a key array of shape {key.shape}")
        return key
    arr = np.asarray(key) if isinstance(key, jax.Array | np.ndarray) else None
    if arr is not None and arr.shape == (2,) and arr.dtype == np.uint32:
        return jnp.asarray(arr)
    raise ValueError(
        f"{name}: expected a jax PRNG key (jax.random.key(seed)) or an integer seed, got "
        f"{type(key).__name__}" + (f" of dtype {arr.dtype}, shape {arr.shape}" if arr is not None else "")
    )
