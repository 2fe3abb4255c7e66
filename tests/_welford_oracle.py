"""Test-only NumPy oracles for mtl_fast.running_stats.

``OracleStats`` is an independent NumPy twin of the accumulator, written in the paper's form
(Groenendijk et al. 2021 eq. 7: mean_t = (1 − 1/t)·mean_{t−1} + x/t; eq. 8: M₂ += (x −
mean_{t−1})(x − mean_t))
and the textbook exponentially weighted form (mean = d·mean + (1 − d)·x,
var = d·(var + (1 − d)·(x − mean_old)²)), rather than the update-by-δ form of the C++ core, so
the two agree to rounding but not by construction. The closed-form helpers below recompute the
same statistics from a whole sequence (two-pass, explicit exponential weights).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np


class OracleStats:
    """NumPy twin: K streams, per-stream counts, optional mask, optional decay."""

    def __init__(
        self, num_streams: int, decay: Optional[float] = None, decay_variance: bool = True
    ) -> None:
        self.decay = decay
        self.decay_variance = decay_variance
        self.count = np.zeros(num_streams, dtype=np.int64)
        self.mean = np.zeros(num_streams)
        self.m2 = np.zeros(num_streams)  # Σ squared deviations, or the EW variance itself

    @property
    def ew(self) -> bool:
        """Whether m2 holds the exponentially weighted variance."""
        return self.decay is not None and self.decay_variance

    def update(self, x: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        """One step; non-finite entries are skipped (the ``nonfinite="skip"`` semantics)."""
        x = np.asarray(x, dtype=np.float64)
        sel = np.isfinite(x) if mask is None else np.asarray(mask, bool) & np.isfinite(x)
        xs = np.where(sel, x, 0.0)
        n = self.count + sel
        nf = np.maximum(n, 1).astype(np.float64)
        old = self.mean
        if self.decay is None:
            mean = (1.0 - 1.0 / nf) * old + xs / nf  # eq. 7
        else:
            d = self.decay
            mean = np.where(n == 1, xs, d * old + (1.0 - d) * xs)
        if self.ew:
            d = self.decay
            m2 = np.where(n == 1, 0.0, d * (self.m2 + (1.0 - d) * (xs - old) ** 2))
        else:
            m2 = self.m2 + (xs - old) * (xs - mean)  # eq. 8
        self.mean = np.where(sel, mean, self.mean)
        self.m2 = np.where(sel, m2, self.m2)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        """Population variance (0 where n = 0)."""
        if self.ew:
            return self.m2.copy()
        return np.where(self.count > 0, self.m2 / np.maximum(self.count, 1), 0.0)

    @property
    def sample_var(self) -> np.ndarray:
        """Unbiased variance; EW: divided by 1 − Σw² summed explicitly; 0 where undefined."""
        if not self.ew:
            return np.where(self.count > 1, self.m2 / np.maximum(self.count - 1, 1), 0.0)
        out = np.zeros_like(self.m2)
        for k, n in enumerate(self.count):
            denom = 1.0 - float(np.sum(ew_weights(int(n), self.decay) ** 2)) if n > 1 else 0.0
            out[k] = self.m2[k] / denom if denom > 1e-300 else 0.0
        return out


def ew_weights(n: int, d: float) -> np.ndarray:
    """Weights of x_1..x_n in the decayed mean (first observation initialises): Σ w = 1."""
    if n == 0:
        return np.zeros(0)
    w = (1.0 - d) * d ** np.arange(n - 1, -1, -1, dtype=np.float64)
    w[0] = d ** (n - 1)
    return w


def ew_stats(xs: np.ndarray, d: float) -> tuple[float, float]:
    """Exponentially weighted mean and population variance of a whole sequence (closed form)."""
    w = ew_weights(len(xs), d)
    mean = math.fsum(w * xs)
    return mean, math.fsum(w * (xs - mean) ** 2)


def two_pass_stats(xs: np.ndarray) -> tuple[float, float]:
    """Mean and population variance by two passes with exactly rounded sums (math.fsum)."""
    if len(xs) == 0:
        return 0.0, 0.0
    mean = math.fsum(xs) / len(xs)
    return mean, math.fsum((xs - mean) ** 2) / len(xs)


def naive_var(xs: np.ndarray) -> float:
    """The textbook one-pass Σx², (Σx)² formula, accumulated step by step in float64."""
    s1 = 0.0
    s2 = 0.0
    for x in xs.tolist():
        s1 += x
        s2 += x * x
    n = len(xs)
    return s2 / n - (s1 / n) ** 2
