"""Tests of the qm9 problem: the data from the qm9pack wheel (units, atomization energies), the
graph cache, the message-passing encoder's invariances and a tiny comparison. Skips only where
the qm9 extra is missing (`make test` installs it); the missing-extra message is always tested."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from mtl_fast.compare.problems import get_problem, qm9_data
from mtl_fast.compare.problems.qm9 import MessagePassingEncoder
from mtl_fast.compare.train import CompareConfig, compare_problem

HAS_QM9 = importlib.util.find_spec("qm9pack") is not None
needs_qm9 = pytest.mark.skipif(not HAS_QM9, reason='needs pip install "mtl_fast[qm9]"')
TINY = CompareConfig(epochs=2, max_steps=2, progress=False, timing_rounds=1, timing_steps=2)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("MTL_FAST_CACHE", str(tmp_path_factory.mktemp("qm9cache")))
    yield
    mp.undo()


def test_missing_extra_names_it(monkeypatch) -> None:
    monkeypatch.setattr(qm9_data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"mtl_fast\[qm9\]"):
        qm9_data.qm9pack_data_dir()
    from mtl_fast.cli import main

    with pytest.raises(SystemExit, match=r"mtl_fast\[qm9\]"):
        main(["compare", "--problem", "qm9", "--tiny", "--no-progress"])


@needs_qm9
def test_table_units_and_atomization_energies() -> None:
    table = qm9_data.load_table()
    assert len(table) == 130_831
    assert table.targets.shape == (130_831, 11)
    # methane (QM9 molecule 1): alpha 13.21 a0^3, HOMO -0.3877 Ha, U0 -40.47893 Ha
    ha = qm9_data.HARTREE_TO_MEV
    refs = qm9_data.ATOM_REFERENCES["U0"]
    assert table.num_atoms[0] == 5 and list(table.types[0, :5]) == [1, 0, 0, 0, 0]
    assert table.targets[0, 1] == pytest.approx(13.21)
    assert table.targets[0, 2] == pytest.approx(-0.3877 * ha)
    u0_atomization = -40.47893 - (refs["C"] + 4 * refs["H"])
    assert table.targets[0, 6] == pytest.approx(u0_atomization * ha)
    # the cache returns the same arrays
    again = qm9_data.load_table()
    assert np.array_equal(again.targets, table.targets)


@needs_qm9
def test_graphs_cache_and_indexing() -> None:
    table = qm9_data.load_table()
    index = np.arange(10, 30)
    graphs = qm9_data.load_graphs(table, index, 3.0)
    cached = qm9_data.load_graphs(table, index, 3.0)
    assert torch.equal(graphs.src, cached.src) and torch.equal(graphs.dist, cached.dist)
    sub = graphs[torch.tensor([3, 7])]
    direct = qm9_data.build_graphs(table, index[[3, 7]], 3.0)
    for field in ("types", "src", "dst", "dist", "atom_ptr", "edge_ptr"):
        assert torch.equal(getattr(sub, field), getattr(direct, field)), field
    assert float(graphs.dist.max()) < 3.0
    # distances match the positions
    i = int(index[0])
    s, d = graphs.src[: int(graphs.edge_ptr[1])], graphs.dst[: int(graphs.edge_ptr[1])]
    pos = torch.from_numpy(table.positions[i].astype(np.float64))
    ref = (pos[s] - pos[d]).norm(dim=1)
    assert torch.allclose(graphs.dist[: len(s)].double(), ref, atol=1e-5)


@needs_qm9
def test_encoder_is_permutation_invariant_and_batch_independent() -> None:
    table = qm9_data.load_table()
    graphs = qm9_data.build_graphs(table, np.arange(40, 44), 4.0)
    torch.manual_seed(0)
    enc = MessagePassingEncoder(8, 2, 4.0).double()
    graphs.dist = graphs.dist.double()
    together = enc(graphs)
    alone = torch.cat([enc(graphs[slice(k, k + 1)]) for k in range(4)])
    assert torch.allclose(together, alone, atol=1e-10)
    one = graphs[slice(0, 1)]
    n = int(one.atom_ptr[1])
    perm = torch.randperm(n)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(n)
    permuted = qm9_data.Molecules(
        one.types[perm], inv[one.src], inv[one.dst], one.dist, one.atom_ptr, one.edge_ptr
    )
    assert torch.allclose(enc(permuted), enc(one), atol=1e-10)


@needs_qm9
def test_qm9_tiny_comparison_and_raw_variant() -> None:
    problem = get_problem("qm9", tiny=True)
    y = problem.data().train.targets["y"]
    assert y.mean(0).abs().max() < 1e-4 and (y.std(0) - 1).abs().max() < 1e-4
    result = compare_problem(problem, ["EqualWeighting", "IMTLG"], TINY)
    assert [o.name for o in result.ran] == ["EqualWeighting", "IMTLG"]
    for o in result.ran:
        assert set(o.metrics) == set(problem.task_names)
        assert all(math.isfinite(v["MAE"]) and v["MAE"] > 0 for v in o.metrics.values())
    raw = get_problem("qm9-raw", tiny=True)
    yr = raw.data().train.targets
    assert torch.allclose(yr["y"].double(), yr["raw"], rtol=1e-6)  # unscaled
    r2 = compare_problem(raw, ["EqualWeighting"], TINY, reference=result)
    assert r2.baseline == result.baseline
