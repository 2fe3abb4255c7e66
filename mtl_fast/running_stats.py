r"""Running mean / variance of K independent streams: host (C++) and device-resident (torch).

CV-Weighting (Groenendijk et al. 2021, §2.3) keeps running statistics of per-task loss ratios with
Welford's algorithm. This module provides two accumulators with the same semantics and the same
numbers:

* :class:`RunningStats` wraps the compiled ``mtl_fast._C.Welford`` (float64, GIL released during
  the update loop); it takes host data (NumPy arrays, sequences, CPU tensors) and returns NumPy.
* :class:`TorchRunningStats` keeps the state as float64 tensors on the losses' device and updates
  it with torch ops only, without host synchronisation; it returns tensors on that device.

Each of the K streams has its own count n, mean and accumulator ``m2``. One update with value x
for stream k (only the streams selected by the mask, n ← n + 1, δ = x − mean_{n−1}):

``decay=None`` — Welford (1962), Groenendijk et al. 2021 eq. 7–8::

    mean_n = mean_{n−1} + δ / n              (= (1 − 1/n)·mean_{n−1} + x/n, eq. 7)
    m2_n   = m2_{n−1} + δ · (x − mean_n)     (M₂ of eq. 8)
    var    = m2 / n                          (population; σ = √var, eq. 8)
    sample_var = m2 / (n − 1)

``decay=d`` with d in [0, 1] — a fixed mean factor α = 1 − d. The first observation of a stream
(n = 1) sets mean = x, m2 = 0 (no bias towards the zero start); for n ≥ 2::

    mean_n = mean_{n−1} + α·δ                (= d·mean_{n−1} + (1 − d)·x)

and the variance is, with ``decay_variance=True`` (default), the exponentially weighted one
(West 1979)::

    var_n = d · (var_{n−1} + α·δ²)          (m2 stores var itself)

which is exactly the weighted population variance Σᵢ wᵢ(xᵢ − mean_n)² of the weights
w₁ = d^{n−1}, wᵢ = (1 − d)·d^{n−i} (i ≥ 2), Σ wᵢ = 1, whose weighted mean is mean_n. Its unbiased
(reliability-weights) version is ``sample_var = var / (1 − Σ wᵢ²)`` with
1 − Σ wᵢ² = 2d·(1 − d^{2(n−1)}) / (1 + d); it is 0 where undefined (n ≤ 1, d = 0 or d = 1).

With ``decay_variance=False`` only the mean is decayed; m2 keeps Welford's form around the decayed
mean, ``m2_n = m2_{n−1} + δ·(x − mean_n)``, ``var = m2 / n``, ``sample_var = m2 / (n − 1)``. This
reproduces the reference CV-Weighting code: its mean factor ``mean_param`` is 0 at the first
step, then ``1 − 1/(t+1)`` (→ ``decay=None``) or the fixed ``mean_decay_param``
(→ ``decay=mean_decay_param, decay_variance=False``); its ``running_S_l / (t+1)`` is ``var``.

Conventions: counts are int64 per stream; every statistic of a stream with n = 0 is 0; the
sample variance is 0 for n ≤ 1 (never NaN); ``std = √var``, ``sample_std = √sample_var``.

Merge (Chan, Golub & LeVeque 1979), plain accumulators only; with n = n_a + n_b and
δ = mean_b − mean_a::

    mean = mean_a + δ · n_b / n,    m2 = m2_a + m2_b + δ² · n_a·n_b / n

Exponentially weighted statistics depend on the interleaving of the observations, so merging an
accumulator with a decay (either side) raises ``ValueError``.

Non-finite inputs (NaN, ±Inf) in selected streams: ``nonfinite="raise"`` raises ``ValueError``
naming the stream indices and updates nothing; ``nonfinite="skip"`` leaves those streams
unchanged (count included) and updates the others. Values of streams outside the mask are never
looked at. ``last_nonfinite`` records the offending streams of the latest update. For
:class:`TorchRunningStats` on a non-CPU device, raising would need a host synchronisation, so
``"raise"`` behaves like ``"skip"`` there: inspect the device tensor ``last_nonfinite`` lazily.

Inputs: a 1-D buffer of length K with a real floating or integer dtype (integers are converted to
float64); bool, complex, object or string data raise ``ValueError``, as do a wrong length, more
dimensions, or a mask that is not 1-D bool of length K. Non-contiguous input is copied. Finite
inputs whose squares overflow float64 give infinite variances (not checked).
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from mtl_fast import _C, _custom_ops

__all__ = ["RunningStats", "TorchRunningStats"]

NonFinite = Literal["raise", "skip"]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[float]]
_STATE_KEYS = ("count", "mean", "m2", "decay", "decay_variance")


def _check_config(num_streams: Any, decay: Any, nonfinite: Any) -> tuple[int, Optional[float]]:
    """Validate the constructor arguments shared by both accumulators."""
    if isinstance(num_streams, bool) or not isinstance(num_streams, (int, np.integer)):
        raise ValueError(f"num_streams must be an int >= 1, got {num_streams!r}")
    if num_streams < 1:
        raise ValueError(f"num_streams must be >= 1, got {num_streams}")
    if decay is not None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float, np.integer, np.floating)):
            raise ValueError(f"decay must be None or a number in [0, 1], got {decay!r}")
        decay = float(decay)
        if not 0.0 <= decay <= 1.0:  # also rejects NaN
            raise ValueError(f"decay must be None or a number in [0, 1], got {decay!r}")
    if nonfinite not in ("raise", "skip"):
        raise ValueError(f"nonfinite must be 'raise' or 'skip', got {nonfinite!r}")
    return int(num_streams), decay


def _check_ddof(ddof: int) -> None:
    """Only the population (0) and sample (1) variances are defined."""
    if ddof not in (0, 1) or isinstance(ddof, bool):
        raise ValueError(f"ddof must be 0 (population) or 1 (sample), got {ddof!r}")


def _format_indices(indices: Sequence[int]) -> str:
    """``[0, 3, 7]``; at most 20 indices, then ``... (N in total)`` (as the C++ message)."""
    shown = ", ".join(str(int(i)) for i in indices[:20])
    if len(indices) > 20:
        shown += f", ... ({len(indices)} in total)"
    return f"[{shown}]"


def _nonfinite_message(indices: Sequence[int]) -> str:
    """The ``nonfinite="raise"`` error text (identical to the C++ one)."""
    return (
        f"non-finite value(s) (NaN/Inf) in stream(s) {_format_indices(indices)}; nothing was "
        "updated (use nonfinite='skip' to leave only those streams unchanged)"
    )


def _host(obj: Any, what: str) -> Any:
    """A CPU tensor as a NumPy view; a tensor on another device raises ``TypeError``."""
    if not isinstance(obj, torch.Tensor):
        return obj
    if obj.device.type != "cpu":
        raise TypeError(
            f"RunningStats takes host data, but {what} is a tensor on device '{obj.device}'; "
            "use TorchRunningStats to keep the statistics on that device without host "
            f"synchronisation (or pass {what}.cpu() explicitly)"
        )
    t = obj.detach().resolve_conj().resolve_neg()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16
        t = t.to(torch.float64)
    return t.numpy()


def _state_arrays(
    state: Mapping[str, Any], num_streams: int, decay: Optional[float], decay_variance: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a state dict against a configuration; return validated (count, mean, m2) arrays."""
    missing = [k for k in _STATE_KEYS if k not in state]
    unexpected = sorted(str(k) for k in state if k not in _STATE_KEYS)
    if missing or unexpected:
        raise ValueError(f"state dict: missing keys {missing}, unexpected keys {unexpected}")

    def host(key: str) -> np.ndarray:
        v = state[key]
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        return np.asarray(v)

    saved = math.nan if state["decay"] is None else float(host("decay"))
    saved_decay = None if math.isnan(saved) else saved
    if saved_decay != decay:
        raise ValueError(f"state dict has decay={saved_decay!r}, this accumulator decay={decay!r}")
    saved_dv = bool(host("decay_variance"))
    if decay is not None and saved_dv != decay_variance:
        raise ValueError(
            f"state dict has decay_variance={saved_dv}, this accumulator "
            f"decay_variance={decay_variance}"
        )
    count, mean, m2 = host("count"), host("mean"), host("m2")
    checker = _C.Welford(num_streams)  # validates shapes, dtypes and values (ValueError)
    checker.set_state(count, mean, m2)
    return checker.get_state()


class _DerivedStats:
    """Statistics derived from ``var`` and ``sample_var``, shared by both accumulators (NumPy
    arrays for :class:`RunningStats`, tensors for :class:`TorchRunningStats`)."""

    @staticmethod
    def _sqrt(x):
        return np.sqrt(x) if isinstance(x, np.ndarray) else torch.sqrt(x)

    @property
    def var(self) -> Any:
        """Population variance (each accumulator defines it)."""
        raise NotImplementedError

    @property
    def sample_var(self) -> Any:
        """Sample variance (each accumulator defines it)."""
        raise NotImplementedError

    @property
    def std(self):
        """Population standard deviation √var (Groenendijk et al. 2021 eq. 8)."""
        return self._sqrt(self.var)

    @property
    def sample_std(self):
        """√sample_var."""
        return self._sqrt(self.sample_var)

    def get_var(self, ddof: int = 0):
        """``var`` for ``ddof=0``, ``sample_var`` for ``ddof=1``."""
        _check_ddof(ddof)
        return self.var if ddof == 0 else self.sample_var

    def get_std(self, ddof: int = 0):
        """``std`` for ``ddof=0``, ``sample_std`` for ``ddof=1``."""
        return self._sqrt(self.get_var(ddof))


class RunningStats(_DerivedStats):
    r"""Running mean / variance of K float64 streams, computed by the C++ core ``mtl_fast._C``.

    See the module docstring for the exact update rules (Groenendijk et al. 2021 eq. 7–8, the
    decayed
    variants, Chan's merge) and the conventions for n ≤ 1 and non-finite inputs.

    Args:
        num_streams: K, the number of independent streams (≥ 1).
        decay: ``None`` for Welford's running statistics, or d in [0, 1] for a fixed mean factor
            ``mean ← d·mean + (1 − d)·x`` (after the first observation, which sets mean = x).
        decay_variance: with a decay, ``True`` gives the exponentially weighted variance
            ``var ← d·(var + (1 − d)·δ²)``; ``False`` keeps ``var = m2/n`` with Welford's m2
            around the decayed mean (the reference CV-Weighting code). Ignored without decay.
        nonfinite: ``"raise"`` (``ValueError``, nothing updated) or ``"skip"`` (those streams
            are left unchanged) when a selected input is NaN or ±Inf.

    Not thread-safe: do not mutate one accumulator from several threads at once.
    """

    def __init__(
        self,
        num_streams: int,
        *,
        decay: Optional[float] = None,
        decay_variance: bool = True,
        nonfinite: NonFinite = "raise",
    ) -> None:
        k, d = _check_config(num_streams, decay, nonfinite)
        self._impl = _C.Welford(k, d, bool(decay_variance), nonfinite)
        # torch.compile: the accumulator behind the welford_* operators (module end).
        self._k = k
        self._handle = _custom_ops.register(self)
        self._order = torch.zeros(1, dtype=torch.int64)

    # ----------------------------------------------------------------------------- config
    @property
    def num_streams(self) -> int:
        """K, the number of streams."""
        return int(self._impl.num_streams)

    @property
    def decay(self) -> Optional[float]:
        """The fixed decay d, or ``None`` for plain Welford statistics."""
        return self._impl.decay

    @property
    def decay_variance(self) -> bool:
        """Whether the variance is exponentially weighted too (only meaningful with a decay)."""
        return bool(self._impl.decay_variance)

    @property
    def nonfinite(self) -> NonFinite:
        """The non-finite input policy, ``"raise"`` or ``"skip"``."""
        return self._impl.nonfinite

    # ------------------------------------------------------------------------- statistics
    @property
    def count(self) -> np.ndarray:
        """Per-stream number of observations (int64, shape (K,); a copy)."""
        return self._impl.count()

    @property
    def mean(self) -> np.ndarray:
        """Per-stream running mean (float64, shape (K,); 0 where n = 0)."""
        return self._impl.mean()

    @property
    def m2(self) -> np.ndarray:
        """The raw accumulator m2 (Σ of squared deviations, or the EW variance itself)."""
        return self._impl.m2()

    @property
    def var(self) -> np.ndarray:
        """Population variance: m2/n, or the exponentially weighted variance (0 where n = 0)."""
        return self._impl.var()

    @property
    def sample_var(self) -> np.ndarray:
        """Unbiased variance m2/(n − 1) (EW: var/(1 − Σw²)); 0 where undefined (n ≤ 1)."""
        return self._impl.sample_var()

    @property
    def last_nonfinite(self) -> np.ndarray:
        """Bool (K,): the selected streams whose input was NaN/Inf in the latest update."""
        return self._impl.last_nonfinite()

    # -------------------------------------------------------------------------- mutation
    def update(self, values: ArrayLike, mask: Optional[ArrayLike] = None) -> None:
        """Add one observation to each selected stream.

        Args:
            values: K numbers: a NumPy array (float32/float64/integer, any strides), a sequence,
                a CPU torch tensor (detached; bfloat16 is converted). A tensor on another device
                raises ``TypeError`` (use :class:`TorchRunningStats`).
            mask: optional bool (K,): the streams to update; the others (and their values,
                even NaN) are ignored. Each stream keeps its own count.

        Raises:
            ValueError: wrong length / shape / dtype, or (``nonfinite="raise"``) a NaN/Inf in a
                selected stream, naming the stream indices; then nothing is updated.
            TypeError: a non-CPU tensor.

        Under ``torch.compile`` (tensor values) the update is the operator ``welford_update``.
        """
        if _custom_ops.compiling() and isinstance(values, torch.Tensor):
            sel = mask if mask is None or isinstance(mask, torch.Tensor) else torch.tensor(mask)
            _WELFORD_UPDATE(self._order, self._handle, values, sel)
            return
        self._impl.update(_host(values, "values"), None if mask is None else _host(mask, "mask"))

    def moments(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, population variance, count) as new CPU tensors (float64, float64, int64): the
        form to read inside a function compiled with ``torch.compile`` (operator
        ``welford_moments``), where the NumPy properties cannot be traced."""
        if _custom_ops.compiling():
            return _WELFORD_MOMENTS(self._order, self._handle, self._k)
        return (
            torch.from_numpy(self._impl.mean()),
            torch.from_numpy(self._impl.var()),
            torch.from_numpy(self._impl.count()),
        )

    def merge(self, other: RunningStats) -> None:
        """Combine ``other`` into this accumulator (Chan et al. 1979), stream by stream.

        The result equals one accumulator fed with both sequences (up to rounding). Both must
        have the same K and no decay (``ValueError`` otherwise). ``other`` is unchanged.
        """
        if not isinstance(other, RunningStats):
            raise TypeError(f"can only merge a RunningStats, got {type(other).__name__}")
        self._impl.merge(other._impl)

    def reset(self, mask: Optional[ArrayLike] = None) -> None:
        """Return the streams in ``mask`` (bool (K,); all if ``None``) to count 0, mean 0."""
        self._impl.reset(None if mask is None else _host(mask, "mask"))

    # ---------------------------------------------------------------------- serialisation
    def state_dict(self) -> dict[str, np.ndarray]:
        """The state as new NumPy arrays (bit-exact).

        Keys: ``count`` (int64 (K,)), ``mean``, ``m2`` (float64 (K,)), ``decay`` (float64 0-d,
        NaN for ``None``) and ``decay_variance`` (bool 0-d). Loadable by
        :meth:`load_state_dict` of either accumulator class.
        """
        count, mean, m2 = self._impl.get_state()
        return {
            "count": count,
            "mean": mean,
            "m2": m2,
            "decay": np.array(math.nan if self.decay is None else self.decay, dtype=np.float64),
            "decay_variance": np.array(self.decay_variance, dtype=np.bool_),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict` (NumPy arrays or tensors), bit-exactly.

        Raises ``ValueError`` (state unchanged) on missing / unexpected keys, a different
        configuration (K, decay, decay_variance), or invalid values (negative counts or m2,
        non-finite entries, non-zero mean or m2 at count 0).
        """
        count, mean, m2 = _state_arrays(state, self.num_streams, self.decay, self.decay_variance)
        self._impl.set_state(count, mean, m2)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle / deepcopy support: the configuration and :meth:`state_dict`."""
        return {
            "config": (self.num_streams, self.decay, self.decay_variance, self.nonfinite),
            "state": self.state_dict(),
        }

    def __setstate__(self, d: dict[str, Any]) -> None:
        """Rebuild the C++ accumulator from :meth:`__getstate__`."""
        k, decay, decay_variance, nonfinite = d["config"]
        RunningStats.__init__(
            self, k, decay=decay, decay_variance=decay_variance, nonfinite=nonfinite
        )
        self.load_state_dict(d["state"])

    def __repr__(self) -> str:
        """Configuration and per-stream counts."""
        counts = np.array2string(self.count, threshold=8, separator=", ")
        dv = f", decay_variance={self.decay_variance}" if self.decay is not None else ""
        return (
            f"RunningStats(num_streams={self.num_streams}, decay={self.decay}{dv}, "
            f"nonfinite={self.nonfinite!r}, count={counts})"
        )


class TorchRunningStats(_DerivedStats):
    r"""Device-resident twin of :class:`RunningStats`: float64 tensors, torch ops, no host sync.

    Same update rules, conventions and numbers as :class:`RunningStats` (see the module
    docstring); every statistic is returned as a new float64 tensor (counts: int64) on
    :attr:`device`. ``update``, ``merge``, ``reset`` and the statistics never synchronise with
    the host (no ``.item()``, no branching on tensor values), so they can run asynchronously on
    a GPU. ``load_state_dict`` and ``repr`` are not on the hot path and may synchronise.

    ``nonfinite="raise"`` raises ``ValueError`` on the CPU only; on other devices it cannot
    raise without a synchronisation and behaves like ``"skip"``: the offending streams are not
    updated and the bool tensor :attr:`last_nonfinite` (on the device) records them.

    Args:
        num_streams: K (≥ 1).
        decay, decay_variance, nonfinite: as in :class:`RunningStats`.
        device: where the statistics live. ``None``: the CPU until the first tensor passed to
            :meth:`update`, whose device is then adopted once. Inputs on another device (or
            NumPy arrays / sequences) are copied to :attr:`device`.
    """

    def __init__(
        self,
        num_streams: int,
        *,
        decay: Optional[float] = None,
        decay_variance: bool = True,
        nonfinite: NonFinite = "raise",
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        k, d = _check_config(num_streams, decay, nonfinite)
        self._k = k
        self._decay = d
        self._decay_variance = bool(decay_variance)
        self._nonfinite: NonFinite = nonfinite
        self._device_fixed = device is not None
        self._device = torch.device("cpu") if device is None else torch.device(device)
        self._count = torch.zeros(k, dtype=torch.int64, device=self._device)
        self._mean = torch.zeros(k, dtype=torch.float64, device=self._device)
        self._m2 = torch.zeros(k, dtype=torch.float64, device=self._device)
        self._last_nonfinite = torch.zeros(k, dtype=torch.bool, device=self._device)

    # ----------------------------------------------------------------------------- config
    @property
    def num_streams(self) -> int:
        """K, the number of streams."""
        return self._k

    @property
    def decay(self) -> Optional[float]:
        """The fixed decay d, or ``None`` for plain Welford statistics."""
        return self._decay

    @property
    def decay_variance(self) -> bool:
        """Whether the variance is exponentially weighted too (only meaningful with a decay)."""
        return self._decay_variance

    @property
    def nonfinite(self) -> NonFinite:
        """The non-finite input policy, ``"raise"`` or ``"skip"``."""
        return self._nonfinite

    @property
    def device(self) -> torch.device:
        """The device holding the statistics."""
        return self._device

    def to(self, device: Union[str, torch.device]) -> TorchRunningStats:
        """Move the statistics to ``device`` (and keep them there); returns ``self``."""
        self._device = torch.device(device)
        self._device_fixed = True
        self._count = self._count.to(self._device)
        self._mean = self._mean.to(self._device)
        self._m2 = self._m2.to(self._device)
        self._last_nonfinite = self._last_nonfinite.to(self._device)
        return self

    def _ew_variance(self) -> bool:
        """Whether m2 holds the exponentially weighted variance itself."""
        return self._decay is not None and self._decay_variance

    # ------------------------------------------------------------------------- statistics
    @property
    def count(self) -> torch.Tensor:
        """Per-stream number of observations (int64 (K,), on the device)."""
        return self._count.clone()

    @property
    def mean(self) -> torch.Tensor:
        """Per-stream running mean (float64 (K,); 0 where n = 0)."""
        return self._mean.clone()

    @property
    def m2(self) -> torch.Tensor:
        """The raw accumulator m2 (Σ of squared deviations, or the EW variance itself)."""
        return self._m2.clone()

    @property
    def var(self) -> torch.Tensor:
        """Population variance: m2/n, or the exponentially weighted variance (0 where n = 0)."""
        if self._ew_variance():
            return self._m2.clone()
        return self._m2 / self._count.clamp(min=1).to(torch.float64)

    @property
    def sample_var(self) -> torch.Tensor:
        """Unbiased variance m2/(n − 1) (EW: var/(1 − Σw²)); 0 where undefined (n ≤ 1)."""
        n = self._count
        two = n >= 2
        if not self._ew_variance():
            return torch.where(two, self._m2 / (n - 1).clamp(min=1).to(torch.float64), 0.0)
        d = self._decay
        assert d is not None
        if d <= 0.0 or d >= 1.0:
            return torch.zeros_like(self._m2)
        p = -torch.expm1((2 * (n - 1)).to(torch.float64) * math.log(d))
        p = torch.where(two, p, 1.0)
        return torch.where(two, self._m2 * (1.0 + d) / ((2.0 * d) * p), 0.0)

    @property
    def last_nonfinite(self) -> torch.Tensor:
        """Bool (K,) on the device: selected streams whose input was NaN/Inf last update."""
        return self._last_nonfinite.clone()

    # ------------------------------------------------------------------------ conversion
    def _tensor(self, obj: Any, what: str, is_mask: bool) -> torch.Tensor:
        """``obj`` as a (K,) float64 (or bool mask) tensor on the device, validated."""
        t: torch.Tensor | None
        if isinstance(obj, torch.Tensor):
            t = obj.detach()
            bad_dtype = (
                t.dtype != torch.bool if is_mask else (t.dtype == torch.bool or t.is_complex())
            )
            dtype_text = str(t.dtype)
        else:
            arr = np.asarray(obj)
            bad_dtype = arr.dtype.kind != "b" if is_mask else arr.dtype.kind not in "fiu"
            dtype_text = str(arr.dtype)
            t = None if bad_dtype else torch.from_numpy(np.array(arr, order="C", copy=True))
        if bad_dtype:
            kind = "a bool" if is_mask else "a real floating or integer"
            raise ValueError(f"{what} must have {kind} dtype, got {dtype_text}")
        assert t is not None
        if t.ndim != 1:
            raise ValueError(f"{what} must be 1-D, got {t.ndim} dimensions")
        if t.shape[0] != self._k:
            raise ValueError(f"{what} has length {t.shape[0]}, expected num_streams = {self._k}")
        if not self._device_fixed and isinstance(obj, torch.Tensor) and not is_mask:
            self.to(t.device)
        return t.to(device=self._device, dtype=torch.bool if is_mask else torch.float64)

    # -------------------------------------------------------------------------- mutation
    def update(self, values: ArrayLike, mask: Optional[ArrayLike] = None) -> None:
        """Add one observation to each selected stream (torch ops only, no host sync).

        Args:
            values: K numbers, ideally a tensor on :attr:`device` (any real dtype, converted to
                float64; detached). Sequences / NumPy arrays / tensors elsewhere are copied.
            mask: optional bool (K,): the streams to update; the others are ignored.

        Raises:
            ValueError: wrong length / shape / dtype; on the CPU with ``nonfinite="raise"``, a
                NaN/Inf in a selected stream (nothing updated, :attr:`last_nonfinite` set).
        """
        x = self._tensor(values, "values", is_mask=False)
        sel = None if mask is None else self._tensor(mask, "mask", is_mask=True)
        bad = ~torch.isfinite(x)
        if sel is not None:
            bad = bad & sel
        self._last_nonfinite = bad
        if self._nonfinite == "raise" and self._device.type == "cpu":
            if _custom_ops.compiling():  # raised at run time, without a host read in the graph
                _RAISE_NONFINITE(bad)
            elif bool(bad.any()):
                _raise_nonfinite(bad)
        ok = ~bad if sel is None else sel & ~bad

        count = self._count + ok.to(torch.int64)
        mean, m2 = self._mean, self._m2
        delta = x - mean
        if self._decay is None:
            new_mean = mean + delta / count.to(torch.float64)
            new_m2 = m2 + delta * (x - new_mean)
        else:
            d = self._decay
            alpha = 1.0 - d
            new_mean = mean + delta * alpha
            if self._decay_variance:
                new_m2 = (m2 + (delta * alpha) * delta) * d
            else:
                new_m2 = m2 + delta * (x - new_mean)
        first = count == 1
        new_mean = torch.where(first, x, new_mean)
        new_m2 = torch.where(first, 0.0, new_m2)
        self._mean = torch.where(ok, new_mean, mean)
        self._m2 = torch.where(ok, new_m2, m2)
        self._count = count

    def merge(self, other: TorchRunningStats) -> None:
        """Combine ``other`` into this one (Chan et al. 1979); see :meth:`RunningStats.merge`."""
        if not isinstance(other, TorchRunningStats):
            raise TypeError(f"can only merge a TorchRunningStats, got {type(other).__name__}")
        if other._k != self._k:
            raise ValueError(f"merge: num_streams differ ({self._k} vs {other._k})")
        if self._decay is not None or other._decay is not None:
            raise ValueError(
                "merge is defined only for plain Welford accumulators (decay=None); "
                "exponentially weighted statistics depend on the order of the observations"
            )
        na, ma, m2a = self._count, self._mean, self._m2
        nb = other._count.to(self._device)
        mb = other._mean.to(self._device)
        m2b = other._m2.to(self._device)
        n = na + nb
        fa, fb, fn = na.to(torch.float64), nb.to(torch.float64), n.to(torch.float64)
        delta = mb - ma
        mean_c = ma + delta * (fb / fn)
        m2_c = (m2a + m2b) + (delta * delta) * ((fa * fb) / fn)
        a_empty, b_empty = na == 0, nb == 0
        self._mean = torch.where(b_empty, ma, torch.where(a_empty, mb, mean_c))
        self._m2 = torch.where(b_empty, m2a, torch.where(a_empty, m2b, m2_c))
        self._count = n

    def reset(self, mask: Optional[ArrayLike] = None) -> None:
        """Return the streams in ``mask`` (bool (K,); all if ``None``) to count 0, mean 0."""
        if mask is None:
            self._count = torch.zeros_like(self._count)
            self._mean = torch.zeros_like(self._mean)
            self._m2 = torch.zeros_like(self._m2)
            self._last_nonfinite = torch.zeros_like(self._last_nonfinite)
            return
        sel = self._tensor(mask, "mask", is_mask=True)
        self._count = torch.where(sel, 0, self._count)
        self._mean = torch.where(sel, 0.0, self._mean)
        self._m2 = torch.where(sel, 0.0, self._m2)
        self._last_nonfinite = self._last_nonfinite & ~sel

    # ---------------------------------------------------------------------- serialisation
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The state as new tensors (bit-exact); same keys as :meth:`RunningStats.state_dict`.

        ``count``, ``mean``, ``m2`` are on :attr:`device`; the 0-d ``decay`` (NaN for ``None``)
        and ``decay_variance`` are CPU tensors.
        """
        return {
            "count": self._count.clone(),
            "mean": self._mean.clone(),
            "m2": self._m2.clone(),
            "decay": torch.tensor(
                math.nan if self._decay is None else self._decay, dtype=torch.float64
            ),
            "decay_variance": torch.tensor(self._decay_variance),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state dict of either accumulator class (tensors or NumPy), bit-exactly.

        Validates like :meth:`RunningStats.load_state_dict` (synchronises with the host).
        """
        count, mean, m2 = _state_arrays(state, self._k, self._decay, self._decay_variance)
        self._count = torch.from_numpy(count).to(self._device)
        self._mean = torch.from_numpy(mean).to(self._device)
        self._m2 = torch.from_numpy(m2).to(self._device)
        self._last_nonfinite = torch.zeros_like(self._last_nonfinite)

    def __repr__(self) -> str:
        """Configuration and device (no statistics: a repr must not synchronise)."""
        dv = f", decay_variance={self._decay_variance}" if self._decay is not None else ""
        return (
            f"TorchRunningStats(num_streams={self._k}, decay={self._decay}{dv}, "
            f"nonfinite={self._nonfinite!r}, device='{self._device}')"
        )


def _raise_nonfinite(bad: torch.Tensor) -> None:
    raise ValueError(_nonfinite_message(torch.nonzero(bad).flatten().tolist()))


# ------------------------------------------------------------------------ torch.compile
# The C++ accumulator and the CPU non-finite check as custom operators (mtl_fast._custom_ops):
# run eagerly at run time; each writes its accumulator's order tensor, which keeps the updates
# and reads of one accumulator in program order.


def _welford_update_eager(
    order: torch.Tensor, handle: int, values: torch.Tensor, mask: Optional[torch.Tensor]
) -> None:
    order.add_(1)
    _custom_ops.lookup(handle).update(values, mask)


def _welford_update_fake(
    order: torch.Tensor, handle: int, values: torch.Tensor, mask: Optional[torch.Tensor]
) -> None:
    return None


_WELFORD_UPDATE = _custom_ops.define(
    "welford_update(Tensor(a!) order, int handle, Tensor values, Tensor? mask) -> ()",
    _welford_update_eager,
    _welford_update_fake,
)


def _welford_moments_eager(
    order: torch.Tensor, handle: int, num_streams: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    order.add_(1)
    return _custom_ops.lookup(handle).moments()


def _welford_moments_fake(
    order: torch.Tensor, handle: int, num_streams: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    k = (num_streams,)
    return (
        torch.empty(k, dtype=torch.float64),
        torch.empty(k, dtype=torch.float64),
        torch.empty(k, dtype=torch.int64),
    )


_WELFORD_MOMENTS = _custom_ops.define(
    "welford_moments(Tensor(a!) order, int handle, int num_streams) -> (Tensor, Tensor, Tensor)",
    _welford_moments_eager,
    _welford_moments_fake,
)


def _raise_nonfinite_eager(bad: torch.Tensor) -> None:
    if bool(bad.any()):
        _raise_nonfinite(bad)


def _raise_nonfinite_fake(bad: torch.Tensor) -> None:
    return None


# ``bad`` is declared written so that the check is not removed as dead code.
_RAISE_NONFINITE = _custom_ops.define(
    "raise_nonfinite_streams(Tensor(a!) bad) -> ()", _raise_nonfinite_eager, _raise_nonfinite_fake
)
