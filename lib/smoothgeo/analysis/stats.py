"""Multiple-comparison correction for the claims table: Holm's step-down adjustment.

Every interval and p-value of a claim comes from :mod:`smoothgeo.analysis.seed_level` (training seeds or models
as the unit); the claims stage then adjusts the p-values of each family of claims with :func:`holm`.
"""
from __future__ import annotations

import numpy as np

__all__ = ["holm"]


def holm(p_values) -> np.ndarray:
    """Holm step-down adjusted p-values (NaN entries stay NaN and do not count towards m)."""
    p = np.asarray(p_values, float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out
