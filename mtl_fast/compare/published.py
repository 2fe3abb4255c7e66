"""Published results to set beside a comparison, and the rank correlation with them.

Only QM9 has a published table here (the papers' NYUv2 / Cityscapes / CelebA numbers need the
full data sets and protocols; see docs/compare.md). Numbers are transcribed from the papers'
text; nothing is estimated:

* Navon et al. 2022 (Nash-MTL), ICML 2022, **Table 1** ("QM9. Test performance averaged over 3
  random seeds"): MR and Δm% ± (the paper does not say whether ± is a standard deviation or a
  standard error) for LS, SI, RLW, DWA, UW, MGDA, PCGrad, CAGrad, IMTL-G, Nash-MTL.
* Liu et al. 2023 (FAMO), NeurIPS 2023, **Table 2** ("Results on QM-9 dataset (11 tasks)"): the
  same ten methods (their numbers "taken from [the Nash-MTL] paper", its Appendix E) plus FAMO,
  with the per-target test MAE, MR over the eleven, and Δm%; FAMO's ± 3.26 (standard error) is
  from its Table 6. The per-target MAE are in the papers' units (D, a0³, meV, meV, a0², meV,
  meV ×4, cal/(mol·K)).

Conventions: the papers' **Δm% is a drop** (lower is better, Δm% = −Δ_MTL of
:func:`mtl_fast.metrics.delta_mtl`); MR is the mean over the 11 targets of a method's rank among
the methods of that table (1 = best). :func:`qm9_comparison` converts this library's results to
the same conventions, ranks among the same methods, and measures Spearman's ρ and Kendall's τ
(SciPy, two-sided p-values) between the two orderings.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

__all__ = ["QM9_SOURCES", "QM9_TARGET_ORDER", "published_qm9_table", "qm9_comparison"]

#: the papers' target order (this library's task names)
QM9_TARGET_ORDER: tuple[str, ...] = (
    "mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U", "H", "G", "cv",
)  # fmt: skip

#: name in the papers → this library's method name
_LIB_NAME = {
    "LS": "EqualWeighting",
    "SI": "SI",
    "RLW": "RLW",
    "DWA": "DWA",
    "UW": "UncertaintyWeighting",
    "MGDA": "MGDA",
    "PCGrad": "PCGrad",
    "CAGrad": "CAGrad",
    "IMTL-G": "IMTLG",
    "Nash-MTL": "NashMTL",
    "FAMO": "FAMO",
}

#: (label, MR, Δm%, ±) — Navon et al. 2022, Table 1
_NAVON_2022 = (
    ("LS", 6.8, 177.6, 3.4),
    ("SI", 4.0, 77.8, 9.2),
    ("RLW", 8.2, 203.8, 3.4),
    ("DWA", 6.4, 175.3, 6.3),
    ("UW", 5.3, 108.0, 22.5),
    ("MGDA", 5.9, 120.5, 2.0),
    ("PCGrad", 5.0, 125.7, 10.3),
    ("CAGrad", 5.7, 112.8, 4.0),
    ("IMTL-G", 4.7, 77.2, 9.3),
    ("Nash-MTL", 2.5, 62.0, 1.4),
)

#: (label, MAE per target in QM9_TARGET_ORDER, MR, Δm%) — Liu et al. 2023, Table 2 (STL: the
#: single-task row, no MR / Δm)
_LIU_2023 = (
    ("STL", (0.07, 0.18, 60.6, 53.9, 0.50, 4.53, 58.8, 64.2, 63.8, 66.2, 0.07), None, None),
    ("LS", (0.11, 0.33, 73.6, 89.7, 5.20, 14.06, 143.4, 144.2, 144.6, 140.3, 0.13), 6.45, 177.6),
    ("SI", (0.31, 0.35, 149.8, 135.7, 1.00, 4.51, 55.3, 55.8, 55.8, 55.3, 0.11), 3.55, 77.8),
    ("RLW", (0.11, 0.34, 76.9, 92.8, 5.87, 15.47, 156.3, 157.1, 157.6, 153.0, 0.14), 8.00, 203.8),
    ("DWA", (0.11, 0.33, 74.1, 90.6, 5.09, 13.99, 142.3, 143.0, 143.4, 139.3, 0.13), 6.27, 175.3),
    ("UW", (0.39, 0.43, 166.2, 155.8, 1.07, 4.99, 66.4, 66.8, 66.8, 66.2, 0.12), 4.91, 108.0),
    ("MGDA", (0.22, 0.37, 126.8, 104.6, 3.23, 5.69, 88.4, 89.4, 89.3, 88.0, 0.12), 5.91, 120.5),
    ("PCGrad", (0.11, 0.29, 75.9, 88.3, 3.94, 9.15, 116.4, 116.8, 117.2, 114.5, 0.11), 4.73, 125.7),
    ("CAGrad", (0.12, 0.32, 83.5, 94.8, 3.22, 6.93, 114.0, 114.3, 114.5, 112.3, 0.12), 5.45, 112.8),
    ("IMTL-G", (0.14, 0.29, 98.3, 93.9, 1.75, 5.70, 101.4, 102.4, 102.0, 100.1, 0.10), 4.36, 77.2),
    ("Nash-MTL", (0.10, 0.25, 82.9, 81.9, 2.43, 5.38, 74.5, 75.0, 75.1, 74.2, 0.09), 2.09, 62.0),
    ("FAMO", (0.15, 0.30, 94.0, 95.2, 1.63, 4.95, 70.82, 71.2, 71.2, 70.3, 0.10), 3.27, 58.5),
)  # fmt: skip

#: Every published QM9 number, by source, in a JSON-ready layout.
QM9_SOURCES: dict[str, dict[str, Any]] = {
    "navon2022": {
        "citation": "Navon et al. 2022 (Nash-MTL), ICML 2022, Table 1 (QM9, 3 seeds)",
        "methods": {
            _LIB_NAME[label]: {"label": label, "mr": mr, "delta_m": dm, "delta_m_pm": pm}
            for label, mr, dm, pm in _NAVON_2022
        },
    },
    "liu2023": {
        "citation": (
            "Liu et al. 2023 (FAMO), NeurIPS 2023, Table 2 (QM-9, 3 seeds; FAMO's ± from "
            "Table 6, standard error; the other methods' numbers are Navon et al. 2022's)"
        ),
        "single_task_mae": dict(zip(QM9_TARGET_ORDER, _LIU_2023[0][1])),
        "methods": {
            _LIB_NAME[label]: {
                "label": label,
                "mae": dict(zip(QM9_TARGET_ORDER, mae)),
                "mr": mr,
                "delta_m": dm,
                "delta_m_pm": 3.26
                if label == "FAMO"
                else dict((r[0], r[3]) for r in _NAVON_2022).get(label),
            }
            for label, mae, mr, dm in _LIU_2023[1:]
        },
    },
}


def published_qm9_table() -> dict[str, dict[str, Any]]:
    """The published QM9 row of each method (Liu et al. 2023's Table 2, which holds all eleven
    methods), keyed by this library's method name: label, MR, Δm%, ± and the per-target MAE."""
    return QM9_SOURCES["liu2023"]["methods"]


def _ranks(values: Sequence[float], *, higher_is_better: bool) -> list[float]:
    """Ranks 1..n (average ranks for ties), 1 = best."""
    from scipy.stats import rankdata

    arr = -np.asarray(values, dtype=float) if higher_is_better else np.asarray(values, float)
    return [float(r) for r in rankdata(arr)]


def _mean_rank(maes: dict[str, dict[str, float]]) -> dict[str, float]:
    """MR as the papers define it: each method's rank per target (lower MAE = 1) among the given
    methods, averaged over the targets."""
    names = list(maes)
    per_target = []
    for t in QM9_TARGET_ORDER:
        per_target.append(_ranks([maes[n][t] for n in names], higher_is_better=False))
    return {n: float(np.mean([r[i] for r in per_target])) for i, n in enumerate(names)}


def _correlation(ours: Sequence[float], theirs: Sequence[float]) -> dict[str, Any]:
    from scipy.stats import kendalltau, spearmanr

    if len(ours) < 3:
        return {"n": len(ours), "spearman": None, "spearman_p": None, "kendall": None,
                "kendall_p": None}  # fmt: skip
    rho = spearmanr(ours, theirs)
    tau = kendalltau(ours, theirs)
    return {
        "n": len(ours),
        "spearman": float(rho.statistic),
        "spearman_p": float(rho.pvalue),
        "kendall": float(tau.statistic),
        "kendall_p": float(tau.pvalue),
    }


def qm9_comparison(
    delta_mtl: dict[str, float],
    delta_mtl_std: dict[str, float],
    mae: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """This library's QM9 results beside the published ones.

    Args:
        delta_mtl: Δ_MTL % per method (higher is better; mean over seeds).
        delta_mtl_std: its standard deviation over seeds.
        mae: the mean test MAE per method and target (``{method: {target: MAE}}``).

    Returns:
        ``{"sources": QM9_SOURCES, "rows": {method: {...}}, "correlation": {...}}``: per method
        our Δm% (= −Δ_MTL), its std, our rank by Δm% among every method given, our rank and MR
        among the published methods that ran, and the published label, MR, Δm% and rank; and
        Spearman / Kendall (with two-sided p-values) between our and the published Δm% over
        the published methods that ran (``"delta_m"``), and the same for MR (``"mr"``).
    """
    published = published_qm9_table()
    ran = [n for n in delta_mtl if math.isfinite(delta_mtl[n])]
    common = [n for n in published if n in ran]
    dm = {n: -float(delta_mtl[n]) for n in ran}
    rank_all = dict(zip(ran, _ranks([dm[n] for n in ran], higher_is_better=False)))
    rank_common = dict(zip(common, _ranks([dm[n] for n in common], higher_is_better=False)))
    pub_rank = dict(
        zip(common, _ranks([published[n]["delta_m"] for n in common], higher_is_better=False))
    )
    mr_ours = _mean_rank({n: mae[n] for n in common}) if common else {}
    mr_theirs = _mean_rank({n: published[n]["mae"] for n in common}) if common else {}
    rows: dict[str, dict[str, Any]] = {}
    for n in ran:
        row: dict[str, Any] = {
            "delta_m": dm[n],
            "delta_m_std": delta_mtl_std.get(n),
            "rank_all": rank_all[n],
        }
        if n in published:
            p = published[n]
            row.update(
                rank=rank_common[n],
                mr=mr_ours[n],
                published_label=p["label"],
                published_delta_m=p["delta_m"],
                published_delta_m_pm=p["delta_m_pm"],
                published_mr=p["mr"],
                published_mr_same_methods=mr_theirs[n],
                published_rank=pub_rank[n],
            )
        rows[n] = row
    # the printed MR ranks among all eleven methods; with some missing, the published MR is
    # recomputed from the published MAE among the methods that ran (same method set as ours)
    full = len(common) == len(published)
    theirs_mr = [published[n]["mr"] if full else mr_theirs[n] for n in common]
    correlation = {
        "methods": common,
        "delta_m": _correlation([dm[n] for n in common], [published[n]["delta_m"] for n in common]),
        "mr": _correlation([mr_ours[n] for n in common], theirs_mr),
        "mr_published": "printed (Liu et al. 2023 Table 2)" if full else "recomputed published",
    }
    missing = [n for n in published if n not in ran]
    return {"sources": QM9_SOURCES, "rows": rows, "correlation": correlation, "missing": missing}
