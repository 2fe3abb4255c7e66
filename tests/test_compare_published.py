"""The published QM9 tables (transcribed from Navon et al. 2022 Table 1 and Liu et al. 2023
Table 2) and the comparison with them: conventions, ranks, MR and rank correlations."""

from __future__ import annotations

import pytest

from mtl_fast.compare import published
from mtl_fast.compare.published import QM9_SOURCES, QM9_TARGET_ORDER, published_qm9_table

pytest.importorskip("scipy")

PAPER_ORDER = ["FAMO", "NashMTL", "IMTLG", "SI", "UncertaintyWeighting", "CAGrad", "MGDA",
               "PCGrad", "DWA", "EqualWeighting", "RLW"]  # fmt: skip


def test_transcribed_tables_are_consistent() -> None:
    navon = QM9_SOURCES["navon2022"]["methods"]
    liu = published_qm9_table()
    assert len(navon) == 10 and len(liu) == 11 and set(navon) < set(liu)
    for name, row in navon.items():
        # FAMO's table takes the ten baselines' Δm% from the Nash-MTL paper
        assert liu[name]["delta_m"] == row["delta_m"]
    assert sorted(liu, key=lambda n: liu[n]["delta_m"]) == PAPER_ORDER
    assert all(set(r["mae"]) == set(QM9_TARGET_ORDER) for r in liu.values())
    # Δm% of each row recomputed from its MAE against the STL row (rounded in the paper)
    stl = QM9_SOURCES["liu2023"]["single_task_mae"]
    for name, row in liu.items():
        dm = 100 * sum((row["mae"][t] - stl[t]) / stl[t] for t in QM9_TARGET_ORDER) / 11
        assert dm == pytest.approx(row["delta_m"], rel=0.2), name


def _ours(order: list[str]) -> tuple[dict, dict, dict]:
    """Δ_MTL (higher is better) that ranks the methods in ``order`` (best first)."""
    delta = {n: -10.0 * (k + 1) for k, n in enumerate(order)}
    std = dict.fromkeys(order, 1.0)
    mae = {n: dict.fromkeys(QM9_TARGET_ORDER, float(k + 1)) for k, n in enumerate(order)}
    return delta, std, mae


def test_identical_ranking_correlates_perfectly() -> None:
    comp = published.qm9_comparison(*_ours(PAPER_ORDER))
    c = comp["correlation"]["delta_m"]
    assert c["n"] == 11 and c["spearman"] == pytest.approx(1.0)
    assert c["kendall"] == pytest.approx(1.0) and c["spearman_p"] < 1e-6
    row = comp["rows"]["FAMO"]
    assert row["delta_m"] == pytest.approx(10.0)  # Δm% = −Δ_MTL
    assert row["rank"] == 1 and row["published_rank"] == 1 and row["published_label"] == "FAMO"
    assert comp["rows"]["RLW"]["mr"] == 11.0  # worst on every target
    assert comp["missing"] == []


def test_reversed_ranking_and_extra_methods() -> None:
    delta, std, mae = _ours(PAPER_ORDER[::-1])
    delta["IMTL"], std["IMTL"] = 5.0, 0.5  # not in the papers: ranked among all, not correlated
    mae["IMTL"] = dict.fromkeys(QM9_TARGET_ORDER, 0.5)
    comp = published.qm9_comparison(delta, std, mae)
    assert comp["correlation"]["delta_m"]["spearman"] == pytest.approx(-1.0)
    assert comp["correlation"]["methods"] == list(published_qm9_table())
    assert comp["rows"]["IMTL"]["rank_all"] == 1 and "published_rank" not in comp["rows"]["IMTL"]


def test_missing_published_methods_are_listed() -> None:
    delta, std, mae = _ours(PAPER_ORDER[:5])
    comp = published.qm9_comparison(delta, std, mae)
    assert set(comp["missing"]) == set(PAPER_ORDER[5:])
    assert comp["correlation"]["delta_m"]["n"] == 5
    assert comp["correlation"]["mr_published"] == "recomputed published"
