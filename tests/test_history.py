"""Tests of mtl_fast.history.WeightHistory."""

from __future__ import annotations

import csv
import importlib.util
import math
import pickle
import sys

import numpy as np
import pytest
import torch

from mtl_fast.history import CSV_COLUMNS, WeightHistory

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def _filled(chunk_size=256) -> WeightHistory:
    h = WeightHistory(["depth", "normal", "seg"], chunk_size=chunk_size)
    for step in range(5):
        w = torch.tensor([1.0, 2.0, 3.0]) / (step + 1)
        loss = torch.tensor([0.5, 0.25, 2.0]) * (step + 1)
        h.record("uniform", torch.ones(3), loss, step=10 * step)
        h.record("lsb", w, loss, step=10 * step)
    return h


# ---------------------------------------------------------------------------- recording
def test_record_tensors_and_arrays() -> None:
    h = WeightHistory()
    w = torch.tensor([0.2, 0.8], requires_grad=True)
    assert h.record("a", w * 1, torch.tensor([1.0, 3.0])) == 0  # non-leaf with grad
    assert h.record("a", np.array([0.5, 0.5]), [2.0, 4.0]) == 1  # array + list
    assert h.record("a", [0.1, 0.9], [torch.tensor(1.0), torch.tensor(5.0)], step=7) == 7
    assert h.record("a", (1, 1), np.array([1.0, 1.0], dtype=np.float32)) == 8
    assert h.task_names == ["task_0", "task_1"] and h.num_tasks == 2
    assert h.methods == ["a"] and "a" in h and "b" not in h and h.num_steps("a") == 4

    a = h.to_arrays("a")
    assert a["steps"].dtype == np.int64 and a["steps"].tolist() == [0, 1, 7, 8]
    for key in ("weights", "losses", "scales"):
        assert a[key].dtype == np.float64 and a[key].shape == (4, 2)
    np.testing.assert_allclose(a["weights"][:, 1], [0.8, 0.5, 0.9, 1.0], rtol=1e-6)
    np.testing.assert_allclose(a["losses"][:, 1], [3.0, 4.0, 5.0, 1.0])
    np.testing.assert_array_equal(a["scales"], a["weights"] * a["losses"])
    # to_arrays returns copies
    a["weights"][:] = 0
    assert h.to_arrays("a")["weights"][0, 1] != 0


def test_mixed_dtypes_and_chunks() -> None:
    h = WeightHistory(["x", "y"], chunk_size=3)
    for i in range(8):
        w = torch.tensor([1.0, 2.0], dtype=torch.float64 if i % 2 else torch.float32)
        h.record("m", w, torch.tensor([i, i + 1], dtype=torch.bfloat16))
    log = h._logs["m"]
    assert len(log.host_weights) == 2 and len(log.pending) == 2  # 3 + 3 moved, 2 waiting
    a = h.to_arrays("m")
    assert len(h._logs["m"].pending) == 0
    assert a["weights"].shape == (8, 2) and a["losses"][:, 0].tolist() == list(range(8))
    h.record("m", [3.0, 4.0], [1.0, 1.0])  # recording after an export appends
    assert h.to_arrays("m")["steps"].tolist() == list(range(9))


def test_record_does_not_read_device_values() -> None:
    # Meta tensors have no data: any host read (.item(), .cpu(), .tolist(), ...) raises.
    # Recording them succeeds, which shows record() never synchronises with the device.
    h = WeightHistory(["a", "b"], chunk_size=None)
    for _ in range(5):
        h.record("m", torch.rand(2, device="meta"), torch.rand(2, device="meta"))
    assert h.num_steps("m") == 5
    with pytest.raises((NotImplementedError, RuntimeError)):
        h.flush()  # the batched host transfer is where values are read


def test_in_place_updates_after_record_do_not_change_history() -> None:
    h = WeightHistory(["a", "b"])
    w = torch.tensor([1.0, 1.0])
    losses = np.array([1.0, 1.0])
    for _ in range(3):
        h.record("m", w, losses)
        w.mul_(2.0)  # a method updating its weight buffer in place
        losses *= 3.0
    a = h.to_arrays("m")
    np.testing.assert_array_equal(a["weights"][:, 0], [1.0, 2.0, 4.0])
    np.testing.assert_array_equal(a["losses"][:, 0], [1.0, 3.0, 9.0])


@pytest.mark.parametrize(
    ("weights", "losses", "step", "match"),
    [
        (torch.ones(3), torch.ones(2), None, "3 tasks but losses have 2"),
        (torch.ones(2, 2), torch.ones(2), None, "1-D"),
        (np.ones((2, 1)), np.ones(2), None, "1-D"),
        (torch.tensor(1.0), torch.ones(1), None, "1-D"),
        (torch.ones(0), torch.ones(0), None, "at least one task"),
        (torch.ones(2, dtype=torch.complex64), torch.ones(2), None, "real"),
        (["a", "b"], [1.0, 2.0], None, "numbers"),
        ([torch.ones(2), torch.ones(2)], [1.0, 2.0], None, "one-element"),
        (torch.ones(2), torch.ones(2), 1.5, "integer"),
        (torch.ones(2), torch.ones(2), True, "integer"),
    ],
)
def test_record_validation(weights, losses, step, match) -> None:
    h = WeightHistory()
    with pytest.raises(ValueError, match=match):
        h.record("m", weights, losses, step=step)
    assert h.methods == []  # nothing half-recorded


def test_record_validation_across_steps() -> None:
    h = WeightHistory()
    h.record("m", torch.ones(3), torch.ones(3), step=5)
    with pytest.raises(ValueError, match="expected 3"):
        h.record("m", torch.ones(2), torch.ones(2))  # T changed between steps
    with pytest.raises(ValueError, match="expected 3"):
        h.record("other", torch.ones(4), torch.ones(4))  # all methods share the tasks
    with pytest.raises(ValueError, match="strictly increase"):
        h.record("m", torch.ones(3), torch.ones(3), step=5)
    with pytest.raises(ValueError, match="strictly increase"):
        h.record("m", torch.ones(3), torch.ones(3), step=2)
    with pytest.raises(ValueError, match="method_name"):
        h.record("", torch.ones(3), torch.ones(3))
    assert h.num_steps("m") == 1 and h.methods == ["m"]
    h.record("other", torch.ones(3), torch.ones(3), step=0)  # steps are per method

    named = WeightHistory(["a", "b"])
    with pytest.raises(ValueError, match="expected 2"):
        named.record("m", torch.ones(3), torch.ones(3))
    with pytest.raises(KeyError, match="recorded methods"):
        named.to_arrays("nope")


def test_constructor_validation() -> None:
    with pytest.raises(TypeError):
        WeightHistory("abc")
    with pytest.raises(ValueError, match="unique"):
        WeightHistory(["a", "a"])
    with pytest.raises(ValueError, match="empty"):
        WeightHistory([])
    with pytest.raises(ValueError, match="chunk_size"):
        WeightHistory(chunk_size=0)


# ---------------------------------------------------------------------------- NaN
def _with_nan() -> WeightHistory:
    h = WeightHistory(["det", "seg"], chunk_size=2)
    nan = float("nan")
    for step, seg_loss in enumerate([1.0, nan, 0.5, nan, 0.25]):
        h.record("amtl", torch.tensor([0.5, 0.5]), torch.tensor([2.0, seg_loss]), step=step)
    return h


def test_nan_is_kept_in_arrays() -> None:
    a = _with_nan().to_arrays("amtl")
    assert np.isnan(a["losses"][[1, 3], 1]).all() and np.isnan(a["scales"][[1, 3], 1]).all()
    assert np.isfinite(a["weights"]).all()
    np.testing.assert_array_equal(a["scales"][[0, 2, 4], 1], [0.5, 0.25, 0.125])


def test_nan_is_skipped_in_plot(tmp_path) -> None:
    fig = _with_nan().plot(tmp_path / "nan.png")
    seg_scale = fig.axes[1].get_lines()[1]  # bottom row, task "seg"
    assert seg_scale.get_xdata().tolist() == [0, 2, 4]
    assert np.isfinite(seg_scale.get_ydata()).all()


# ---------------------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path) -> None:
    h = _with_nan()
    h.record("uniform", [1.0, 1.0], [0.1 + 0.2, 1 / 3], step=3)
    path = h.to_csv(tmp_path / "history.csv")

    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == (5 + 1) * 2
    assert rows[0] == {
        "method": "amtl",
        "step": "0",
        "task": "det",
        "weight": "0.5",
        "loss": "2.0",
        "scale": "1.0",
    }
    for method in h.methods:
        a = h.to_arrays(method)
        mine = [r for r in rows if r["method"] == method]
        assert [int(r["step"]) for r in mine[::2]] == a["steps"].tolist()
        assert [r["task"] for r in mine[:2]] == ["det", "seg"]
        for key, col in (("weights", "weight"), ("losses", "loss"), ("scales", "scale")):
            back = np.array([float(r[col]) for r in mine]).reshape(-1, 2)
            np.testing.assert_array_equal(back, a[key])  # exact, NaN included
    assert rows[-1]["loss"] == repr(1 / 3) and rows[3]["loss"] == "nan"

    h2 = WeightHistory.from_csv(path)
    assert h2.task_names == h.task_names and h2.methods == h.methods
    for method in h.methods:
        for key, value in h.to_arrays(method).items():
            np.testing.assert_array_equal(h2.to_arrays(method)[key], value)


def test_from_csv_rejects_incomplete_rows(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("method,step,task,weight,loss,scale\nm,0,a,1,1,1\nm,0,b,1,1,1\nm,1,a,1,1,1\n")
    with pytest.raises(ValueError, match="lacks task"):
        WeightHistory.from_csv(path)
    path.write_text("method,step,weight\n")
    with pytest.raises(ValueError, match="missing CSV column"):
        WeightHistory.from_csv(path)


# ---------------------------------------------------------------------------- plot
def test_plot_figure(tmp_path) -> None:
    h = _filled()
    path = tmp_path / "weights.png"
    fig = h.plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2 * 2  # two rows (weights, scales) x two methods
    top_left, bottom_left = fig.axes[0], fig.axes[2]
    assert top_left.get_title() == "uniform" and fig.axes[1].get_title() == "lsb"
    assert len(top_left.get_lines()) == 3  # one curve per task
    assert bottom_left.get_yscale() == "linear"
    np.testing.assert_allclose(
        fig.axes[3].get_lines()[2].get_ydata(), h.to_arrays("lsb")["scales"][:, 2]
    )
    assert [t.get_text() for t in top_left.get_legend().get_texts()] == ["depth", "normal", "seg"]

    fig = h.plot(tmp_path / "one", methods=["lsb"], log_scale=True)
    assert (tmp_path / "one").read_bytes()[:4] == b"\x89PNG"  # PNG without a suffix
    assert len(fig.axes) == 2 and fig.axes[1].get_yscale() == "log"
    assert fig.canvas.__class__.__name__ == "FigureCanvasAgg"

    with pytest.raises(KeyError):
        h.plot(methods=["nope"])
    with pytest.raises(ValueError, match="nothing to plot"):
        WeightHistory().plot()


def test_plot_does_not_use_pyplot() -> None:
    before = set(sys.modules)
    _filled().plot()
    if "matplotlib.pyplot" not in before:
        assert "matplotlib.pyplot" not in sys.modules


# ---------------------------------------------------------------------------- state
def test_state_dict_and_pickle() -> None:
    h = _with_nan()
    h.record("b", torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))  # still pending
    from_pickle = pickle.loads(pickle.dumps(h))
    from_state = WeightHistory()
    from_state.load_state_dict(h.state_dict())
    for h2 in (from_pickle, from_state):
        assert h2.methods == h.methods and h2.task_names == h.task_names
        for m in h.methods:
            for key, value in h.to_arrays(m).items():
                np.testing.assert_array_equal(h2.to_arrays(m)[key], value)
        h2.record("b", [0.0, 0.0], [0.0, 0.0])  # continues after the last step
        assert h2.to_arrays("b")["steps"].tolist() == [0, 1]
    state = h.state_dict()
    state["methods"]["b"]["weights"] = np.ones((2, 2))
    with pytest.raises(ValueError, match="inconsistent"):
        WeightHistory().load_state_dict(state)


# ---------------------------------------------------------------------------- TensorBoard
def test_tensorboard_missing_gives_clear_error(tmp_path, monkeypatch) -> None:
    # Simulate an environment without tensorboard (None in sys.modules -> ImportError).
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        _filled().to_tensorboard(tmp_path / "tb")


@pytest.mark.skipif(
    not HAS_TENSORBOARD,
    reason="optional 'tensorboard' package not installed (pip install tensorboard)",
)
def test_tensorboard_export(tmp_path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    h = _with_nan()
    h.record("a/b c", [1.0, 2.0], [3.0, 4.0], step=0)
    log_dir = h.to_tensorboard(tmp_path / "tb")
    assert sorted(p.name for p in log_dir.iterdir()) == ["a_b_c", "amtl"]

    acc = EventAccumulator(str(log_dir / "amtl"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {f"{k}/{t}" for k in ("weight", "loss", "scale") for t in ("det", "seg")}
    seg_loss = acc.Scalars("loss/seg")
    assert [e.step for e in seg_loss] == [0, 2, 4]  # NaN steps skipped
    assert [e.value for e in seg_loss] == [1.0, 0.5, 0.25]
    assert all(math.isclose(e.value, 1.0) for e in acc.Scalars("scale/det"))


# ------------------------------------------------------------------ Gram diagnostics


def test_record_diagnostics_arrays_state_and_figure(tmp_path):
    import torch as _torch

    import mtl_fast as mf
    from mtl_fast.diagnostics import gram_diagnostics
    from mtl_fast.history import WeightHistory as _WH

    h = _WH(["a", "b", "c"], chunk_size=2)
    gen = _torch.Generator().manual_seed(0)
    pairs = []
    for k in range(5):
        J = _torch.randn(3, 7, generator=gen, dtype=_torch.float64)
        pairs.append((J @ J.T, _torch.rand(3, generator=gen, dtype=_torch.float64)))
        h.record_diagnostics("m", pairs[-1], step=10 * k)
    a = h.diagnostics_arrays("m")
    assert a["steps"].tolist() == [0, 10, 20, 30, 40] and a["cosines"].shape == (5, 3, 3)
    for i, (G, alpha) in enumerate(pairs):
        d = gram_diagnostics(G, alpha)
        np.testing.assert_allclose(a["cosines"][i], d.cosines.numpy())
        assert a["conflict_rate"][i] == pytest.approx(float(d.conflict_rate))
        assert a["weight_entropy"][i] == pytest.approx(float(d.weight_entropy))
    # from a method after its step
    model_method = mf.IMTLG()
    with pytest.raises(ValueError, match="no Gram matrix"):
        h.record_diagnostics("imtlg", model_method)
    z = _torch.randn(4, 5, requires_grad=True)
    zs = model_method.split(z, num_tasks=3)
    model_method.loss([(zs[t] * (t + 1)).pow(2).mean() for t in range(3)]).backward()
    h.record_diagnostics("imtlg", model_method)
    assert h.diagnostic_methods == ["m", "imtlg"]
    with pytest.raises(ValueError, match="strictly increase"):
        h.record_diagnostics("m", pairs[0], step=40)
    with pytest.raises(ValueError, match="tasks"):
        h.record_diagnostics("m", (_torch.eye(2), _torch.ones(2)))
    # state round trip (host arrays only) and the figure
    h2 = _WH()
    h2.load_state_dict(h.state_dict())
    np.testing.assert_allclose(h2.diagnostics_arrays("m")["gram"], a["gram"])
    fig = h.plot_diagnostics(tmp_path / "diag.png")
    assert (tmp_path / "diag.png").stat().st_size > 0
    assert len(fig.axes) >= 4
    with pytest.raises(KeyError, match="no diagnostics"):
        h.diagnostics_arrays("nope")
