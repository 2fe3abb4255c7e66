"""Tests of mtl_fast.running_stats: the C++ Welford accumulator and its torch twin."""

from __future__ import annotations

import copy
import math
import pickle
import threading
from typing import Any, Optional

import numpy as np
import pytest
import torch
from _welford_oracle import OracleStats, ew_stats, naive_var, two_pass_stats
from hypothesis import given, settings
from hypothesis import strategies as st

import mtl_fast._C
from mtl_fast.running_stats import RunningStats, TorchRunningStats

STATS = ("count", "mean", "m2", "var", "sample_var", "std", "sample_std")
DECAYS: list[dict[str, Any]] = [
    {},
    {"decay": 0.9},
    {"decay": 0.9, "decay_variance": False},
    {"decay": 0.0},
    {"decay": 1.0},
    {"decay": 0.999},
]


def _steps(
    rng: np.random.Generator, n: int, k: int, p_mask: float = 0.7, p_nan: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """n steps of k values (per-stream location and scale) and masks."""
    loc = rng.uniform(-5, 5, k)
    scale = rng.uniform(0.1, 3, k)
    x = loc + scale * rng.standard_normal((n, k))
    if p_nan:
        x[rng.random((n, k)) < p_nan] = np.nan
    return x, rng.random((n, k)) < p_mask


def _feed(acc: Any, x: np.ndarray, mask: Optional[np.ndarray] = None) -> Any:
    for t in range(len(x)):
        acc.update(x[t], None if mask is None else mask[t])
    return acc


def _np(v: Any) -> np.ndarray:
    return v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)


def _assert_same_stats(a: Any, b: Any, rtol: float = 0.0, atol: float = 0.0) -> None:
    for name in STATS:
        np.testing.assert_allclose(
            _np(getattr(a, name)), _np(getattr(b, name)), rtol=rtol, atol=atol, err_msg=name
        )


def _bits(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64).view(np.int64)


# --------------------------------------------------------------------------------- the extension
def test_uses_the_compiled_extension() -> None:
    assert mtl_fast._C.__file__.endswith((".so", ".pyd"))
    rs = RunningStats(3)
    assert isinstance(rs._impl, mtl_fast._C.Welford)
    assert type(rs._impl).__module__ == "mtl_fast._C"


def test_initial_state_is_zero() -> None:
    for acc in (RunningStats(4), TorchRunningStats(4)):
        for name in STATS:
            assert not _np(getattr(acc, name)).any(), name
        assert _np(acc.count).dtype == np.int64
        assert _np(acc.mean).dtype == np.float64


# ----------------------------------------------------------------------------- vs the oracle
def test_plain_vs_oracle_1e5_steps_with_masks() -> None:
    rng = np.random.default_rng(0)
    x, mask = _steps(rng, 100_000, 3, p_mask=0.8)
    rs, oracle = RunningStats(3), OracleStats(3)
    for t in range(len(x)):
        rs.update(x[t], mask[t])
        oracle.update(x[t], mask[t])
        if t in (0, 1, 9, 999):
            np.testing.assert_allclose(rs.mean, oracle.mean, rtol=1e-12)
            np.testing.assert_allclose(rs.var, oracle.var, rtol=1e-12)
    np.testing.assert_array_equal(rs.count, mask.sum(axis=0))
    np.testing.assert_array_equal(rs.count, oracle.count)
    np.testing.assert_allclose(rs.mean, oracle.mean, rtol=1e-12)
    np.testing.assert_allclose(rs.var, oracle.var, rtol=1e-12)
    np.testing.assert_allclose(rs.sample_var, oracle.sample_var, rtol=1e-12)
    np.testing.assert_allclose(rs.std, np.sqrt(oracle.var), rtol=1e-12)
    # and against exactly rounded two-pass statistics of each stream's own subsequence
    for k in range(3):
        xs = x[mask[:, k], k]
        mean, var = two_pass_stats(xs)
        assert rs.mean[k] == pytest.approx(mean, rel=1e-12)
        assert rs.var[k] == pytest.approx(var, rel=1e-12)
        assert rs.sample_var[k] == pytest.approx(np.var(xs, ddof=1), rel=1e-12)


@pytest.mark.parametrize("kw", DECAYS[1:], ids=str)
def test_decay_vs_oracle_and_closed_form(kw: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    x, mask = _steps(rng, 3000, 3)
    rs = _feed(RunningStats(3, **kw), x, mask)
    oracle = _feed(OracleStats(3, **kw), x, mask)
    np.testing.assert_array_equal(rs.count, oracle.count)
    np.testing.assert_allclose(rs.mean, oracle.mean, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(rs.var, oracle.var, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(rs.sample_var, oracle.sample_var, rtol=1e-12, atol=1e-300)
    d = kw["decay"]
    for k in range(3):
        xs = x[mask[:, k], k]
        mean, ew_var = ew_stats(xs, d)
        assert rs.mean[k] == pytest.approx(mean, rel=1e-12)
        if kw.get("decay_variance", True):
            assert rs.var[k] == pytest.approx(ew_var, rel=1e-10, abs=1e-300)


@pytest.mark.parametrize("d", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 40])
def test_ew_sample_var_is_the_reliability_weighted_variance(d: float, n: int) -> None:
    rng = np.random.default_rng(n)
    xs = rng.normal(2.0, 1.5, n)
    rs = _feed(RunningStats(1, decay=d), xs[:, None])
    w = OracleStats(1, decay=d)
    _feed(w, xs[:, None])
    if n == 1:
        assert rs.sample_var[0] == 0.0
    else:
        assert rs.sample_var[0] == pytest.approx(w.sample_var[0], rel=1e-10)
    if n == 2:  # two points: the usual unbiased estimate (x1 − x2)² / 2, whatever the weights
        assert rs.sample_var[0] == pytest.approx((xs[0] - xs[1]) ** 2 / 2, rel=1e-12)


def test_decay_edge_values() -> None:
    xs = np.array([[3.0], [5.0], [-1.0], [8.0]])
    last = _feed(RunningStats(1, decay=0.0), xs)
    assert last.mean[0] == 8.0 and last.var[0] == 0.0 and last.sample_var[0] == 0.0
    first = _feed(RunningStats(1, decay=1.0), xs)
    assert first.mean[0] == 3.0 and first.var[0] == 0.0 and first.sample_var[0] == 0.0
    # the first observation initialises the decayed mean (no bias towards the zero start)
    one = _feed(RunningStats(1, decay=0.9), xs[:1])
    assert one.mean[0] == 3.0 and one.var[0] == 0.0


@pytest.mark.parametrize("decay", [None, 0.8])
def test_reproduces_the_reference_cv_weighting_recursion(decay: Optional[float]) -> None:
    """The published CV-Weighting code: mean_param = 0, then 1 − 1/(t+1) or mean_decay_param;
    running_S += (x − mean_old)(x − mean_new); variance = running_S / (t + 1)."""
    rng = np.random.default_rng(2)
    xs = rng.uniform(0.5, 2.0, (500, 2))
    rs = RunningStats(2, decay=decay, decay_variance=False)
    mean, s = np.zeros(2), np.zeros(2)
    for t in range(len(xs)):
        if t == 0:
            mean_param = 0.0
        elif decay is not None:
            mean_param = decay
        else:
            mean_param = 1.0 - 1.0 / (t + 1)
        new_mean = mean_param * mean + (1 - mean_param) * xs[t]
        s += (xs[t] - mean) * (xs[t] - new_mean)
        mean = new_mean
        rs.update(xs[t])
        np.testing.assert_allclose(rs.mean, mean, rtol=1e-13)
        np.testing.assert_allclose(rs.var, s / (t + 1), rtol=1e-11, atol=1e-15)


def test_huge_mean_naive_fails_welford_does_not() -> None:
    rng = np.random.default_rng(3)
    xs = 1e8 + rng.standard_normal(20_000)
    _, exact = two_pass_stats(xs)
    naive = naive_var(xs)
    assert abs(naive - exact) / exact > 0.05  # catastrophic cancellation
    rs = _feed(RunningStats(1), xs[:, None])
    oracle = _feed(OracleStats(1), xs[:, None])
    assert abs(rs.var[0] - exact) / exact < 1e-6
    assert abs(oracle.var[0] - exact) / exact < 1e-6
    assert rs.mean[0] == pytest.approx(math.fsum(xs) / len(xs), rel=1e-15)


# -------------------------------------------------------------------------- masks and counts
def test_masks_and_per_stream_counts() -> None:
    rs = RunningStats(3)
    rs.update([1.0, 10.0, 100.0])
    before = rs.state_dict()
    rs.update([2.0, np.nan, 200.0], mask=[True, False, False])  # NaN outside the mask: ignored
    np.testing.assert_array_equal(rs.count, [2, 1, 1])
    assert rs.mean[0] == 1.5
    assert _bits(rs.mean)[1:].tolist() == _bits(before["mean"])[1:].tolist()
    assert _bits(rs.m2)[1:].tolist() == _bits(before["m2"])[1:].tolist()
    rs.update(np.array([0.0, 0.0, 0.0]), mask=np.zeros(3, bool))
    np.testing.assert_array_equal(rs.count, [2, 1, 1])
    assert not rs.last_nonfinite.any()


# ------------------------------------------------------------------------------------- merge
_vals = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, allow_subnormal=False)


@st.composite
def _sequence(draw: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 25))
    x = draw(st.lists(st.lists(_vals, min_size=k, max_size=k), min_size=n, max_size=n))
    m = draw(st.lists(st.lists(st.booleans(), min_size=k, max_size=k), min_size=n, max_size=n))
    return np.array(x, dtype=np.float64).reshape(n, k), np.array(m, dtype=bool).reshape(n, k)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), k=st.integers(1, 4))
def test_merge_equals_single_accumulator_over_concatenation(data: Any, k: int) -> None:
    xa, ma = data.draw(_sequence(k))
    xb, mb = data.draw(_sequence(k))
    a, b = _feed(RunningStats(k), xa, ma), _feed(RunningStats(k), xb, mb)
    b_before = b.state_dict()
    a.merge(b)
    whole = _feed(RunningStats(k), np.concatenate([xa, xb]), np.concatenate([ma, mb]))
    np.testing.assert_array_equal(a.count, whole.count)
    np.testing.assert_allclose(a.mean, whole.mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(a.m2, whole.m2, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(a.sample_var, whole.sample_var, rtol=1e-9, atol=1e-7)
    for key, v in b.state_dict().items():  # the argument is left untouched
        np.testing.assert_array_equal(v, b_before[key])
    # the torch twin merges to the same numbers as the C++ core
    ta, tb = _feed(TorchRunningStats(k), xa, ma), _feed(TorchRunningStats(k), xb, mb)
    ta.merge(tb)
    _assert_same_stats(a, ta, rtol=1e-15)


def test_merge_with_itself_and_with_empty() -> None:
    rng = np.random.default_rng(4)
    x, mask = _steps(rng, 50, 3)
    a = _feed(RunningStats(3), x, mask)
    twice = _feed(_feed(RunningStats(3), x, mask), x, mask)
    a.merge(a)
    np.testing.assert_array_equal(a.count, twice.count)
    np.testing.assert_allclose(a.mean, twice.mean, rtol=1e-13)
    np.testing.assert_allclose(a.var, twice.var, rtol=1e-12)
    state = a.state_dict()
    a.merge(RunningStats(3))
    empty = RunningStats(3)
    empty.merge(a)
    for acc in (a, empty):
        for key in ("count", "mean", "m2"):
            np.testing.assert_array_equal(acc.state_dict()[key], state[key])


@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_merge_errors(cls: Any) -> None:
    with pytest.raises(ValueError, match=r"num_streams differ \(3 vs 4\)"):
        cls(3).merge(cls(4))
    for left, right in [({"decay": 0.9}, {"decay": 0.9}), ({}, {"decay": 0.5})]:
        with pytest.raises(ValueError, match="only for plain Welford"):
            cls(2, **left).merge(cls(2, **right))
    with pytest.raises(TypeError, match="can only merge"):
        cls(2).merge(object())


# ----------------------------------------------------------------------------- serialisation
@pytest.mark.parametrize("kw", DECAYS, ids=str)
def test_state_dict_round_trip_is_bit_exact_and_resumes_exactly(kw: dict[str, Any]) -> None:
    rng = np.random.default_rng(5)
    x, mask = _steps(rng, 400, 4)
    unbroken = _feed(RunningStats(4, **kw), x, mask)
    first = _feed(RunningStats(4, **kw), x[:200], mask[:200])
    state = first.state_dict()
    assert state["count"].dtype == np.int64 and state["mean"].dtype == np.float64
    resumed = RunningStats(4, **kw)
    resumed.load_state_dict(pickle.loads(pickle.dumps(state)))
    for key, v in resumed.state_dict().items():
        np.testing.assert_array_equal(v, state[key])
    np.testing.assert_array_equal(_bits(resumed.m2), _bits(state["m2"]))
    _feed(resumed, x[200:], mask[200:])
    _assert_same_stats(resumed, unbroken)  # rtol = atol = 0: bit-exact
    # the dict holds copies
    state["mean"][:] = 123.0
    assert not np.any(first.mean == 123.0)
    # and across the two classes, both directions
    twin = TorchRunningStats(4, **kw)
    twin.load_state_dict(first.state_dict())
    _assert_same_stats(twin, first)
    back = RunningStats(4, **kw)
    back.load_state_dict(twin.state_dict())
    _assert_same_stats(back, first)


def test_pickle_and_deepcopy() -> None:
    rs = _feed(RunningStats(2, decay=0.7, nonfinite="skip"), np.arange(10.0).reshape(5, 2))
    for clone in (pickle.loads(pickle.dumps(rs)), copy.deepcopy(rs)):
        assert (clone.decay, clone.nonfinite, clone.num_streams) == (0.7, "skip", 2)
        _assert_same_stats(clone, rs)
        clone.update([1.0, 2.0])
        assert clone.count[0] == rs.count[0] + 1


@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_load_state_dict_errors(cls: Any) -> None:
    src = RunningStats(3, decay=0.9)
    src.update([1.0, 2.0, 3.0])
    good = src.state_dict()
    acc = cls(3, decay=0.9)
    with pytest.raises(ValueError, match=r"missing keys \['m2'\]"):
        acc.load_state_dict({k: v for k, v in good.items() if k != "m2"})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra'\]"):
        acc.load_state_dict({**good, "extra": 1})
    with pytest.raises(ValueError, match=r"decay=0\.9, this accumulator decay=None"):
        cls(3).load_state_dict(good)
    with pytest.raises(ValueError, match="decay_variance=True, this accumulator"):
        cls(3, decay=0.9, decay_variance=False).load_state_dict(good)
    with pytest.raises(ValueError, match="count has length 3, expected num_streams = 4"):
        cls(4, decay=0.9).load_state_dict(good)
    bad_values = [
        ("count", np.array([-1, 1, 1]), "negative count"),
        ("count", np.array([1.0, 1.0, 1.0]), "count must have an integer dtype"),
        ("mean", np.array([1.0, np.nan, 3.0]), r"non-finite mean or m2 \(stream 1\)"),
        ("m2", np.array([0.0, 0.0, -1.0]), r"negative m2 \(stream 2\)"),
    ]
    for key, value, msg in bad_values:
        with pytest.raises(ValueError, match=msg):
            acc.load_state_dict({**good, key: value})
    zero_count = {**good, "count": np.array([0, 1, 1])}
    with pytest.raises(ValueError, match="count 0 with a non-zero mean"):
        acc.load_state_dict(zero_count)
    assert not _np(acc.count).any()  # failed loads leave the state unchanged


# ------------------------------------------------------------------------------------- reset
@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_reset(cls: Any) -> None:
    acc = _feed(cls(3), np.arange(12.0).reshape(4, 3))
    acc.reset(np.array([False, True, False]))
    np.testing.assert_array_equal(_np(acc.count), [4, 0, 4])
    assert _np(acc.mean)[1] == 0.0 and _np(acc.var)[1] == 0.0
    acc.update([0.0, 7.0, 0.0])
    assert _np(acc.mean)[1] == 7.0 and _np(acc.count)[1] == 1
    acc.reset()
    for name in STATS:
        assert not _np(getattr(acc, name)).any()
    with pytest.raises(ValueError, match="mask has length 2"):
        acc.reset([True, False])


# -------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_constructor_validation(cls: Any) -> None:
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="num_streams must be"):
            cls(bad)
    for bad in (-0.1, 1.1, math.nan, math.inf, True, "0.5"):
        with pytest.raises(ValueError, match=r"decay must be None or a number in \[0, 1\]"):
            cls(2, decay=bad)
    with pytest.raises(ValueError, match="nonfinite must be 'raise' or 'skip'"):
        cls(2, nonfinite="ignore")
    assert cls(2, decay=1).decay == 1.0 and cls(2, decay=np.float32(0.5)).decay == 0.5


def test_extension_validates_on_its_own() -> None:
    with pytest.raises(ValueError, match=r"decay must be None or a number in \[0, 1\]"):
        mtl_fast._C.Welford(2, 1.5)
    with pytest.raises(ValueError, match="num_streams must be >= 1"):
        mtl_fast._C.Welford(0)
    with pytest.raises(ValueError, match="nonfinite must be"):
        mtl_fast._C.Welford(2, None, True, "warn")


@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_input_validation_messages(cls: Any) -> None:
    acc = cls(3)
    cases = [
        ([1.0, 2.0], "values has length 2, expected num_streams = 3"),
        (np.zeros((1, 3)), "values must be 1-D, got 2 dimensions"),
        (
            np.array([True, False, True]),
            "values must have a real floating or integer dtype, got bool",
        ),
        (np.array([1j, 2, 3]), "real floating or integer dtype, got complex128"),
        (np.array(["a", "b", "c"]), "real floating or integer dtype"),
        (np.array([1.0, None, 2.0], dtype=object), "real floating or integer dtype, got object"),
    ]
    for values, msg in cases:
        with pytest.raises(ValueError, match=msg):
            acc.update(values)
    mask_cases = [
        ([True, False], "mask has length 2, expected num_streams = 3"),
        (np.array([1, 0, 1]), "mask must have a bool dtype, got int64"),
        (np.ones((3, 1), bool), "mask must be 1-D"),
    ]
    for mask, msg in mask_cases:
        with pytest.raises(ValueError, match=msg):
            acc.update([1.0, 2.0, 3.0], mask=mask)
    for ddof in (2, -1, True):
        with pytest.raises(ValueError, match="ddof must be 0"):
            acc.get_std(ddof)
    assert not _np(acc.count).any()


@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_nonfinite_raise_names_streams_and_updates_nothing(cls: Any) -> None:
    acc = cls(4)
    acc.update([1.0, 2.0, 3.0, 4.0])
    state = acc.state_dict()
    msg = r"non-finite value\(s\) \(NaN/Inf\) in stream\(s\) \[1, 3\]; nothing was updated"
    with pytest.raises(ValueError, match=msg):
        acc.update([5.0, np.nan, 6.0, -np.inf])
    np.testing.assert_array_equal(_np(acc.last_nonfinite), [False, True, False, True])
    for key, v in acc.state_dict().items():
        np.testing.assert_array_equal(_np(v), _np(state[key]))
    # only selected streams are checked
    acc.update([5.0, np.nan, 6.0, np.inf], mask=[True, False, True, False])
    np.testing.assert_array_equal(_np(acc.count), [2, 1, 2, 1])
    assert not _np(acc.last_nonfinite).any()
    many = cls(30)
    with pytest.raises(ValueError, match=r"\[0, 1, 2, .*, 19, \.\.\. \(30 in total\)\]"):
        many.update(np.full(30, np.nan))


@pytest.mark.parametrize("cls", [RunningStats, TorchRunningStats])
def test_nonfinite_skip(cls: Any) -> None:
    acc = cls(3, nonfinite="skip")
    acc.update([1.0, 2.0, 3.0])
    acc.update([3.0, np.nan, np.inf])
    np.testing.assert_array_equal(_np(acc.count), [2, 1, 1])
    np.testing.assert_array_equal(_np(acc.mean), [2.0, 2.0, 3.0])
    np.testing.assert_array_equal(_np(acc.last_nonfinite), [False, True, True])
    acc.update([1.0, 1.0, 1.0])
    assert not _np(acc.last_nonfinite).any()
    assert not np.isnan(_np(acc.std)).any()


# ---------------------------------------------------------------------------------- inputs
def test_input_types_give_identical_results() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(20, 3)).astype(np.float32)
    wide = np.zeros((20, 6), dtype=np.float64)
    wide[:, ::2] = x
    variants = [
        lambda r: x[r],  # float32
        lambda r: x[r].astype(np.float64),
        lambda r: wide[r, ::2],  # non-contiguous view (copied)
        lambda r: x[r].astype(np.float64).tolist(),
        lambda r: tuple(x[r].astype(np.float64)),
        lambda r: torch.from_numpy(x[r]),  # CPU tensor, float32
        lambda r: torch.from_numpy(x[r]).double().requires_grad_(),
        lambda r: torch.from_numpy(wide[r])[::2],  # non-contiguous tensor
        lambda r: memoryview(x[r].astype(np.float64)),  # buffer protocol
    ]
    results = []
    for make in variants:
        rs = RunningStats(3)
        for r in range(20):
            rs.update(make(r), mask=torch.ones(3, dtype=torch.bool) if r == 5 else None)
        results.append(rs.state_dict())
    for res in results[1:]:
        for key in ("count", "mean", "m2"):
            np.testing.assert_array_equal(res[key], results[0][key])
    ints = RunningStats(2)
    ints.update(np.array([1, 2], dtype=np.int32))
    ints.update([3, 4])
    np.testing.assert_array_equal(ints.mean, [2.0, 3.0])
    half = RunningStats(2)
    half.update(torch.tensor([1.5, 2.5], dtype=torch.bfloat16))
    np.testing.assert_array_equal(half.mean, [1.5, 2.5])


def test_device_tensor_is_rejected_with_a_pointer_to_the_torch_twin() -> None:
    rs = RunningStats(3)
    with pytest.raises(TypeError, match="TorchRunningStats"):
        rs.update(torch.zeros(3, device="meta"))
    with pytest.raises(TypeError, match="mask is a tensor on device 'meta'"):
        rs.update([1.0, 2.0, 3.0], mask=torch.ones(3, dtype=torch.bool, device="meta"))


def test_properties_return_copies() -> None:
    for acc in (RunningStats(2), TorchRunningStats(2)):
        acc.update([1.0, 3.0])
        for name in STATS:
            v = getattr(acc, name)
            v[...] = 99
            assert not (_np(getattr(acc, name)) == 99).any(), name


def test_update_releases_the_gil_safely_from_threads() -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(200, 5000))
    accs = [RunningStats(5000) for _ in range(4)]
    threads = [threading.Thread(target=_feed, args=(a, x)) for a in accs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serial = _feed(RunningStats(5000), x)
    for a in accs:
        _assert_same_stats(a, serial)


def test_repr() -> None:
    rs = RunningStats(3, decay=0.5, nonfinite="skip")
    rs.update([1.0, 2.0, 3.0], mask=[True, True, False])
    assert repr(rs) == (
        "RunningStats(num_streams=3, decay=0.5, decay_variance=True, nonfinite='skip', "
        "count=[1, 1, 0])"
    )
    assert repr(TorchRunningStats(2)) == (
        "TorchRunningStats(num_streams=2, decay=None, nonfinite='raise', device='cpu')"
    )


# ------------------------------------------------------------------------------ torch twin
@pytest.mark.parametrize("kw", DECAYS, ids=str)
def test_torch_twin_matches_the_cpp_core(kw: dict[str, Any]) -> None:
    rng = np.random.default_rng(8)
    x, mask = _steps(rng, 1500, 5, p_nan=0.03)
    rs = RunningStats(5, nonfinite="skip", **kw)
    tw = TorchRunningStats(5, nonfinite="skip", **kw)
    for t in range(len(x)):
        rs.update(x[t], mask[t])
        tw.update(torch.from_numpy(x[t]), torch.from_numpy(mask[t]))
        if t in (0, 1, 2, 5, 30):  # short histories exercise the n ≤ 1 and expm1 branches
            _assert_same_stats(rs, tw, rtol=1e-15)
            np.testing.assert_array_equal(rs.last_nonfinite, tw.last_nonfinite.numpy())
    _assert_same_stats(rs, tw, rtol=1e-15)
    for ddof in (0, 1):
        np.testing.assert_allclose(rs.get_std(ddof), tw.get_std(ddof).numpy(), rtol=1e-15)
    for name in STATS:
        v = getattr(tw, name)
        assert v.dtype == (torch.int64 if name == "count" else torch.float64)


def test_torch_twin_accepts_host_inputs_and_keeps_float64() -> None:
    tw = TorchRunningStats(3)
    tw.update([1, 2, 3])
    tw.update(np.array([2.0, 4.0, 6.0], dtype=np.float32), mask=np.array([True, False, True]))
    tw.update(torch.tensor([3.0, 5.0, 9.0], dtype=torch.float16), mask=[True, True, False])
    np.testing.assert_array_equal(tw.count.numpy(), [3, 2, 2])
    np.testing.assert_array_equal(tw.mean.numpy(), [2.0, 3.5, 4.5])


def test_torch_twin_runs_without_host_synchronisation() -> None:
    """On the meta device every value-dependent host access (.item(), bool(), .tolist())
    raises, so running the whole hot path there proves it never synchronises."""
    for kw in DECAYS:
        tw = TorchRunningStats(4, device="meta", **kw)
        x = torch.empty(4, device="meta")
        tw.update(x)  # nonfinite="raise" cannot raise off the CPU: behaves like "skip"
        tw.update(x, mask=torch.empty(4, dtype=torch.bool, device="meta"))
        tw.reset(torch.empty(4, dtype=torch.bool, device="meta"))
        for name in (*STATS, "last_nonfinite"):
            v = getattr(tw, name)
            assert v.device.type == "meta" and v.shape == (4,)
        tw.get_std(1)
        if "decay" not in kw:
            tw.merge(TorchRunningStats(4, device="meta"))
        tw.state_dict()


def test_torch_twin_adopts_the_first_tensor_device() -> None:
    tw = TorchRunningStats(2)
    assert tw.device.type == "cpu"
    tw.update([1.0, 2.0])  # host data does not fix the device
    tw.update(torch.empty(2, device="meta"))
    assert tw.device.type == "meta" and tw.mean.device.type == "meta"
    fixed = TorchRunningStats(2, device="cpu")
    fixed.update(torch.tensor([1.0, 2.0]))
    assert fixed.device.type == "cpu"
    assert fixed.to("meta") is fixed and fixed.count.device.type == "meta"


def test_torch_twin_on_each_device(device: torch.device) -> None:
    """Same numbers as the C++ core on every device of the suite; on CUDA, the whole update
    loop runs under ``set_sync_debug_mode("error")`` (any host synchronisation raises)."""
    rng = np.random.default_rng(9)
    x, mask = _steps(rng, 300, 4, p_nan=0.05)
    for kw in DECAYS:
        rs = _feed(RunningStats(4, nonfinite="skip", **kw), x, mask)
        tw = TorchRunningStats(4, nonfinite="raise" if device.type != "cpu" else "skip", **kw)
        tw.to(device)
        xs = torch.from_numpy(x).to(device)
        ms = torch.from_numpy(mask).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            for t in range(len(x)):
                tw.update(xs[t], ms[t])
            stats = [getattr(tw, name) for name in STATS]
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
        for name, v in zip(STATS, stats):
            assert v.device.type == device.type
            np.testing.assert_allclose(_np(getattr(rs, name)), _np(v), rtol=1e-15, err_msg=name)
        np.testing.assert_array_equal(rs.last_nonfinite, _np(tw.last_nonfinite))
