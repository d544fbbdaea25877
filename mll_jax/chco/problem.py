"""The CHCO problem's interface: method names, the result of one solve, and input checks.

Shared by :func:`mll_jax.chco.solve` and :func:`mll_jax.chco.solve_batch`: both refuse the same inputs with
:class:`~mll_jax.errors.CHCOInputError` and use the same working precision and default tolerances.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mll_jax.errors import CHCOInputError

__all__ = [
    "METHODS", "DEFAULT_METHOD", "CHCOResult", "check_shapes", "default_atol", "is_traced", "working_dtype",
    "check_tolerances", "check_finite",
]

METHODS = ("fista", "pgd", "head")
DEFAULT_METHOD = "pgd"


class CHCOResult(NamedTuple):
    """Result of :func:`solve` (a pytree; leading batch axes under ``vmap``)."""

    X: jax.Array  # (H, C) combination matrix; padded heads have zero rows
    loss: jax.Array  # (C,) per-class loss L_c at X
    objective: jax.Array  # () sum_c L_c
    iterations: jax.Array  # () iterations (fista) or sweeps over heads (head)
    converged: jax.Array  # () bool: duality gap <= tol * |objective| + atol
    gap: jax.Array  # () Frank-Wolfe duality gap at X (upper bound on objective - optimum)



def check_shapes(S, head_mask, X0):
    """Refuse a label matrix that is not (H >= 1, C >= 2) floating point, or a mismatched ``head_mask`` / ``X0``."""
    if S.ndim != 2:
        raise CHCOInputError(f"S must be a 2-D (heads, classes) array, got shape {S.shape}")
    H, C = S.shape
    if H < 1:
        raise CHCOInputError(f"S has no heads (shape {S.shape})")
    if C < 2:
        raise CHCOInputError(f"CHCO needs at least 2 target classes, S has shape {S.shape}")
    if head_mask is not None and tuple(head_mask.shape) != (H,):
        raise CHCOInputError(f"head_mask must have shape ({H},), got {tuple(head_mask.shape)}")
    if X0 is not None and tuple(X0.shape) != (H, C):
        raise CHCOInputError(f"X0 must have shape {(H, C)}, got {tuple(X0.shape)}")
    if not jnp.issubdtype(S.dtype, jnp.floating):
        raise CHCOInputError(f"S must be floating point, got dtype {S.dtype}")



def default_atol(C, dtype):
    """0 in float64; 1e-7 in float32.

    With the accurate evaluation (``log_pair``) the float32 gap keeps resolving relative gaps of 1e-5
    on objectives of 0.01 and more (measured on the benchmark's instances, H = 1000: 60 models at
    C = 10 and 15 at C = 50 all certified with ``atol = 0``, at most 13 / 33 iterations), where an absolute
    floor of ``2 * C * eps`` (2.4e-6 at C = 10) lets a quarter of the C = 10 models stop up to 1e-4 relative
    from the optimum. The small absolute floor only matters for near-perfect experts whose
    objective is itself below 0.01, where it bounds the error at 1e-7 absolute."""
    del C
    return 0.0 if jnp.dtype(dtype) == jnp.float64 else 1e-7


def is_traced(*xs) -> bool:
    """Whether any of ``xs`` is a JAX tracer (its values cannot be inspected)."""
    return any(isinstance(x, jax.core.Tracer) for x in xs if x is not None)


def working_dtype(dtype):
    """Working precision for an input dtype: floats below float32 (float16, bfloat16) and non-floats
    are upcast to float32; float32 and float64 are kept. :func:`solve` and :func:`solve_batch` share it."""
    dtype = jnp.dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise CHCOInputError(f"S must be real-valued, got dtype {dtype}")
    if not jnp.issubdtype(dtype, jnp.floating) or dtype.itemsize < 4:
        return jnp.dtype(jnp.float32)
    return dtype


def check_tolerances(tol, atol):
    """Refuse NaN or negative tolerances (only possible when they are concrete numbers)."""
    for name, v in (("tol", tol), ("atol", atol)):
        if v is None or is_traced(v):
            continue
        a = np.asarray(v)
        if a.shape != () or not np.issubdtype(a.dtype, np.number) or not (float(a) >= 0):
            raise CHCOInputError(f"{name} must be a nonnegative number, got {v!r}")


def check_finite(S, head_mask, what="S"):
    """Refuse NaN or infinite values of a concrete ``S`` in unmasked heads (the error names the first one)."""
    A = np.asarray(S)
    if not (np.issubdtype(A.dtype, np.number) or jnp.issubdtype(A.dtype, jnp.floating)):
        return  # the dtype check reports it
    bad = ~np.isfinite(A.astype(np.float64) if A.dtype.itemsize < 4 else A)
    if head_mask is not None:
        hm = np.asarray(head_mask, bool)
        if hm.shape != (A.shape[0],):
            return  # the shape check reports it
        bad &= hm[:, None]
    if bad.any():
        h, c = np.argwhere(bad)[0]
        raise CHCOInputError(
            f"{what} has {int(bad.sum())} non-finite value(s) (first: {A[h, c]} at head {h}, class {c})")
