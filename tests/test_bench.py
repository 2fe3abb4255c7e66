"""The benchmark machinery (mtl_fast.bench): the LibMTL-style peer, the precision comparison,
the method registry, the targets, the report writer and the ``mtl-fast bench`` command."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import mtl_fast as mf
from mtl_fast.bench import libmtl_style, report, runner
from mtl_fast.bench import workloads as wl

#: A micro tier: every section and code path, in seconds.
TINY = wl.Tier(
    name="tiny",
    ops_T=(2, 3),
    ops_D=(512,),
    ops_dtypes=("fp32",),
    precision_T=(2,),
    precision_D=256,
    precision_seeds=1,
    train_T=(2,),
    train_width=2,
    train_image=16,
    train_batch=2,
    train_methods=("EqualWeighting", "CVWeighting", "IMTLG", "LibMTL-style IMTL"),
    train_warmup=1,
    train_min_repeats=1,
    stats_T=(3,),
    stats_steps=2,
    scaling_T=(2, 4),
    scaling_D=256,
    scaling_train_T=(2,),
    warmup=0,
    min_repeats=1,
    max_repeats=1,
    budget_s=0.0,
    copy_bytes=1 << 16,
)


# --------------------------------------------------------------------------- LibMTL-style peer


@pytest.mark.parametrize("T", [2, 3, 5, 8])
def test_libmtl_imtlg_agrees_with_reference(T: int) -> None:
    """Algorithm 1 (unit gradients, difference matrices, explicit inverse) = the Gram-space
    reference on well-conditioned float64 gradients."""
    gen = torch.Generator().manual_seed(T)
    J = torch.randn(T, 300, generator=gen, dtype=torch.float64)
    J *= torch.linspace(0.5, 2.0, T, dtype=torch.float64)[:, None]
    ours = mf.reference.imtl_g_weights(J @ J.T)
    theirs = libmtl_style.imtl_g_weights(J)
    torch.testing.assert_close(theirs, ours, rtol=1e-9, atol=1e-12)
    assert float(theirs.sum()) == pytest.approx(1.0)


def test_libmtl_imtlg_fp32_close_to_reference() -> None:
    J = torch.randn(6, 1000, generator=torch.Generator().manual_seed(0))
    ours = mf.imtl_g_weights(mf.gram(J))
    torch.testing.assert_close(libmtl_style.imtl_g_weights(J), ours, rtol=1e-3, atol=1e-5)


def test_libmtl_steps_shapes_and_mgda() -> None:
    J = wl.make_jacobian(5, 2000, seed=1)
    assert libmtl_style.imtl_g_step(J).shape == (2000,)
    assert libmtl_style.mgda_step(J).shape == (2000,)
    G = mf.gram(J)
    fw = libmtl_style.mgda_weights_from_gram(G)
    exact = mf.mgda_weights(G)
    G64 = G.double()
    assert float(fw.sum()) == pytest.approx(1.0)
    assert (fw >= 0).all()
    # Frank-Wolfe stops at a 1e-5 step: close to, never below, the exact minimum.
    f_fw, f_ex = wl.mgda_objective(G64, fw), wl.mgda_objective(G64, exact)
    assert f_ex <= f_fw * (1 + 1e-9)
    assert f_fw <= f_ex * (1 + 1e-2)


def test_libmtl_single_task() -> None:
    J = torch.randn(1, 10)
    assert libmtl_style.imtl_g_weights(J).tolist() == [1.0]
    assert libmtl_style.mgda_weights(J).tolist() == [1.0]


# --------------------------------------------------------------------------- precision


#: The weights are returned in float32: an error below one float32 ulp (relative) is the
#: rounding of the output itself, which no implementation returning float32 can beat.
FLOAT32_OUTPUT_ROUNDING = torch.finfo(torch.float32).eps


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("T", (2, 3, 4, 8, 16, 40, 64))
def test_imtlg_never_less_accurate_than_libmtl_fp32(T: int, seed: int) -> None:
    """Rows with norms over e^±3 and a shared component: against a float64 oracle, mtl_fast's
    IMTL-G weights are never less accurate than the LibMTL-style fp32 formula (beyond the
    rounding of the float32 output)."""
    errors = wl.imtlg_errors(T, 20_000, seed)
    assert errors["mtl_fast"] <= max(errors["libmtl_style"], FLOAT32_OUTPUT_ROUNDING), errors
    assert errors["mtl_fast"] < 1e-5, errors


def test_jacobian_geometry() -> None:
    J = wl.make_jacobian(9, 50_000, seed=3)
    norms = J.norm(dim=1)
    assert float(norms.max() / norms.min()) == pytest.approx(torch.e**6, rel=0.05)
    U = J / norms[:, None]
    cos = (U @ U.T)[~torch.eye(9, dtype=torch.bool)]
    assert float(cos.mean()) == pytest.approx(0.5, abs=0.05)
    assert wl.make_jacobian(3, 100, torch.bfloat16).dtype == torch.bfloat16


def test_mgda_oracle_matches_exact_solver() -> None:
    G = mf.gram(wl.make_jacobian(12, 5000, seed=2))
    oracle = wl.mgda_oracle(G)
    if oracle is None:
        pytest.skip("quadprog not installed")
    G64 = G.double()
    f_or, f_mf = wl.mgda_objective(G64, oracle), wl.mgda_objective(G64, mf.mgda_weights(G))
    assert abs(f_or - f_mf) <= 1e-6 * f_or


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", wl.METHOD_NAMES)
def test_registry_builds_every_defined_method(name: str) -> None:
    """Every method that exists in this build is constructed with the registry's arguments
    (a new required argument would otherwise silently drop it from the benchmark)."""
    if wl.find_method_class(name) is None:
        pytest.skip(f"{name} is not defined yet")
    method = wl.build_method(name, 4)
    assert isinstance(method, mf.Weighting)
    assert method.num_tasks in (None, 4)


def test_registry_unknown_method() -> None:
    with pytest.raises(LookupError):
        wl.build_method("NoSuchMethod", 3)


def test_train_step_runs() -> None:
    step = wl.make_method_step("IMTLG", 3, TINY, "cpu")
    assert torch.isfinite(step.step()).all()
    libmtl = wl.make_method_step("LibMTL-style IMTL", 3, TINY, "cpu")
    alpha = libmtl.step()
    assert float(alpha.sum()) == pytest.approx(1.0, abs=1e-5)


def test_stats_steps_agree() -> None:
    """The three CV-Weighting steps produce the same weighted totals."""
    names = [n for n in wl.STATS_IMPLS]
    try:
        steps = {n: wl.make_stats_step(n, 5) for n in names}
    except wl.Unsupported as exc:
        pytest.skip(str(exc))
    for _ in range(6):
        totals = {n: float(s()) for n, s in steps.items()}
        ref = totals["pure PyTorch"]
        for n, v in totals.items():
            assert v == pytest.approx(ref, rel=1e-5), (n, totals)


def test_torchjd_absent_is_skipped_cleanly(monkeypatch) -> None:
    monkeypatch.setattr(wl, "torchjd_available", lambda: False)
    inp = wl.OpInputs.make(2, 64, "fp32", "cpu")
    with pytest.raises(wl.Unsupported, match="torchjd is not installed"):
        wl.build_op("step_imtlg", "torchjd", inp)
    assert "torchjd" not in wl.imtlg_errors(2, 64, 0)


# --------------------------------------------------------------------------- runner and report


def test_peak_extra_bytes_counts_temporaries() -> None:
    x = torch.ones(1 << 18)  # 1 MiB
    extra = runner.peak_extra_bytes(lambda: (x * 2).sum(), torch.device("cpu"))
    if extra is None:
        pytest.skip("the profiler records no memory events here")
    assert (1 << 20) <= extra < (1 << 20) + 4096


def test_time_interleaved_drops_failing_callable() -> None:
    errors: dict[str, str] = {}

    def bad() -> None:
        raise RuntimeError("boom")

    out = runner.time_interleaved(
        {"ok": lambda: None, "bad": bad}, torch.device("cpu"), min_repeats=3, errors=errors
    )
    assert set(out) == {"ok"} and out["ok"].repeats >= 3
    assert "boom" in errors["bad"]


def _record(impl: str, op: str, T: int, D: int | None, median: float, **kw) -> dict:
    return {
        "section": "ops",
        "op": op,
        "impl": impl,
        "T": T,
        "D": D,
        "dtype": "fp32",
        "device": "cpu",
        "median_s": median,
        **kw,
    }


def test_targets_pass_and_miss() -> None:
    recs = [
        _record("mtl_fast", "step_imtlg", 8, 10**6, 1.0, peak_extra_bytes=10),
        _record("libmtl_style", "step_imtlg", 8, 10**6, 6.0),
        _record("mtl_fast", "step_imtlg", 64, 10**6, 1.0, peak_extra_bytes=10**12),
        _record("libmtl_style", "step_imtlg", 64, 10**6, 4.0),
        _record("torchjd", "step_imtlg", 64, 10**6, 2.0),
    ]
    targets = {t["id"]: t for t in report.evaluate_targets({"records": recs})}
    assert targets["cpu_imtlg_vs_libmtl"]["status"] == "miss"
    assert "T=64" in targets["cpu_imtlg_vs_libmtl"]["measured"]
    assert targets["cpu_imtlg_vs_torchjd_large"]["status"] == "pass"
    assert targets["cpu_imtlg_vs_torchjd_small"]["status"] == "n/a"
    assert targets["memory_step"]["status"] == "miss"
    assert targets["gpu_no_host_sync"]["status"] == "n/a"


def test_report_writes_valid_files(tmp_path) -> None:
    results = runner.run(TINY, device="cpu")
    sections = {r["section"] for r in results["records"]}
    assert {"ops", "train", "stats", "scaling", "scaling_train"} <= sections
    paths = report.write(results, tmp_path)
    data = json.loads(paths["json"].read_text())  # strict: no NaN
    assert data["machine"]["cpu"] and data["machine"]["torch"] == torch.__version__
    assert {t["status"] for t in data["targets"]} <= {"pass", "miss", "n/a"}
    md = paths["md"].read_text()
    for heading in ("## Targets", "## Ops", "## Training step", "## Loss statistics"):
        assert heading in md
    assert "| target | status | measured |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(paths["png"]).ndim == 3
    assert paths["json"].name.startswith(data["machine_slug"])


def test_cli_quick_only_ops(tmp_path, monkeypatch, capsys) -> None:
    """``mtl-fast bench --quick --only ops`` end to end, with the quick tier shrunk."""
    from mtl_fast.cli import main

    monkeypatch.setitem(wl.TIERS, "quick", dataclasses.replace(TINY, name="quick"))
    assert main(["bench", "--quick", "--only", "ops", "--out", str(tmp_path), "-q"]) == 0
    out = capsys.readouterr().out
    assert "| target | status | measured |" in out
    files = sorted(p.suffix for p in tmp_path.iterdir())
    assert files == [".json", ".md", ".png"]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert data["tier"] == "quick" and data["sections"] == ["ops"]
    assert {r["section"] for r in data["records"]} == {"ops"}
