"""The benchmark machinery (benchmarks/harness): the LibMTL-style peer, the precision comparison,
the method registry, the targets, the report writer and the ``mtl-fast bench`` command."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch

import mtl_fast as mf
from benchmarks.harness import libmtl_style, report, runner
from benchmarks.harness import workloads as wl

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
def test_registry_builds_every_benchmarked_method(name: str) -> None:
    """Every benchmarked method is registered and built with the benchmark's options."""
    assert wl.find_method_class(name) is not None
    method = wl.build_method(name, 4)
    assert isinstance(method, mf.Weighting)
    assert method.num_tasks in (None, 4)
    if name == "FAMO":
        assert method.extra_pass is False


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


def test_cli_bench_finds_the_harness_of_the_checkout(tmp_path, monkeypatch) -> None:
    """``mtl-fast bench`` looks for ``benchmarks/harness`` above the package (a source checkout,
    an editable install), then in the current directory (a wheel run from a checkout)."""
    import mtl_fast
    from mtl_fast import cli

    checkout = Path(mtl_fast.__file__).resolve().parents[1]
    assert cli.harness_root() == checkout
    assert Path(cli.HARNESS.as_posix()) == Path("benchmarks/harness")
    # An installed wheel: the package in site-packages, run from somewhere without a checkout.
    site = tmp_path / "site" / "mtl_fast"
    site.mkdir(parents=True)
    monkeypatch.setattr(mtl_fast, "__file__", str(site / "__init__.py"))
    monkeypatch.chdir(tmp_path)
    assert cli.harness_root() is None
    monkeypatch.chdir(checkout)  # the same wheel, run from the repository root
    assert cli.harness_root() == checkout


def test_cli_bench_without_checkout_names_the_fix(monkeypatch, capsys) -> None:
    """From a wheel without the source checkout, ``mtl-fast bench`` fails with exit status 2 and
    says where the harness lives and what to run."""
    from mtl_fast import cli

    monkeypatch.setattr(cli, "harness_root", lambda: None)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/harness/" in err and "python -m benchmarks.harness" in err
    assert "Clone the repository" in err


def test_cli_bench_refuses_a_shadowing_benchmarks_package(tmp_path, monkeypatch, capsys) -> None:
    """A ``benchmarks.harness`` imported from elsewhere than the checkout is not run."""
    import types

    from mtl_fast import cli

    other = types.ModuleType("benchmarks.harness.cli")
    other.__file__ = str(tmp_path / "site" / "benchmarks" / "harness" / "cli.py")
    monkeypatch.setattr(cli.importlib, "import_module", lambda name: other)
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "site") in err and "shadows" in err


def test_cli_bench_forwards_every_option_to_the_harness(monkeypatch) -> None:
    """Options after ``bench`` (``--help`` included) are the harness's; other commands still
    refuse unknown options."""
    from benchmarks.harness import cli as harness_cli
    from mtl_fast import cli

    seen: list[list[str]] = []
    monkeypatch.setattr(harness_cli, "main", lambda argv: seen.append(list(argv)) or 0)
    assert cli.main(["bench", "--tier", "smoke", "--help", "--only", "ops"]) == 0
    assert seen == [["--tier", "smoke", "--help", "--only", "ops"]]
    with pytest.raises(SystemExit):
        cli.main(["info", "--tier", "smoke"])
    with pytest.raises(SystemExit) as exc:
        harness_cli.build_parser().parse_args(["--tier", "nope"])
    assert exc.value.code == 2


# --------------------------------------------------------------------------- gpu tier


class HostEvent:
    """A stand-in for ``torch.cuda.Event`` on the host clock: runs the event-timed path of
    :func:`runner.time_interleaved` on the CPU."""

    def __init__(self) -> None:
        self.t = 0.0

    def record(self) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: HostEvent) -> float:
        return (end.t - self.t) * 1e3


@pytest.fixture
def host_events(monkeypatch) -> None:
    """Time with (host-clock) events, as on CUDA: k calls per block, input rotation."""
    monkeypatch.setattr(runner, "uses_events", lambda device: True)
    monkeypatch.setattr(runner, "new_event", lambda device: HostEvent())


#: The gpu tier with every size shrunk, its flags kept (no precision, no stats, time limits,
#: extra D up to T = 16, memory cap).
GPU_TINY = dataclasses.replace(
    wl.TIERS["gpu"],
    ops_T=(2, 24),
    ops_D=(512,),
    gpu_extra_D=(4096,),
    train_T=(2,),
    train_width=2,
    train_image=16,
    train_batch=2,
    train_methods=("EqualWeighting", "IMTLG", "MGDA", "LibMTL-style IMTL"),
    train_warmup=1,
    train_min_repeats=1,
    scaling_T=(2, 4),
    scaling_D=512,
    scaling_train_T=(2,),
    warmup=1,
    min_repeats=2,
    max_repeats=2,
    budget_s=0.0,
    copy_bytes=1 << 16,
    memory_cap_bytes=1 << 30,
)


def test_gpu_tier_is_well_formed() -> None:
    from benchmarks.harness import cli

    gpu = wl.TIERS["gpu"]
    assert cli.TIERS == tuple(wl.TIERS)
    assert gpu.ops_T == (2, 3, 8, 16, 40, 64, 128, 256)
    assert gpu.ops_D == (1_000_000, 16_000_000) and gpu.ops_dtypes == ("fp32", "bf16")
    assert gpu.ops_Ds(16, "cuda") == (1_000_000, 16_000_000, 64_000_000)
    assert gpu.ops_Ds(40, "cuda") == gpu.ops_D == gpu.ops_Ds(2, "cpu")
    assert not gpu.precision and "stats" not in gpu.default_sections
    assert set(gpu.default_sections) <= set(runner.SECTIONS)
    assert (gpu.train_T, gpu.train_width, gpu.train_image, gpu.train_batch) == (
        (3, 10, 40, 128),
        32,
        128,
        64,
    )
    assert max(gpu.scaling_T) == 4096 and gpu.scaling_D == 1_000_000
    assert gpu.scaling_train_T == (3, 10, 40, 128)
    assert (gpu.warmup, gpu.min_repeats, gpu.max_repeats, gpu.budget_s) == (3, 10, 50, 0.2)
    assert gpu.copy_bytes == 2 * wl.GiB and gpu.memory_cap_bytes == 100 * wl.GiB
    limits = dict(gpu.section_time_s)
    assert set(limits) == set(gpu.default_sections) and 100 <= sum(limits.values()) <= 240
    # The other tiers keep their behaviour.
    for name in ("smoke", "quick", "full"):
        t = wl.TIERS[name]
        assert t.precision and t.default_sections is None and t.section_time_s == ()
        assert t.memory_cap_bytes == wl.MEMORY_BUDGET and t.cell_time_s is None
    assert wl.TIERS["full"].ops_Ds(256, "cuda") == (100_000, 1_000_000, 4_000_000, 16_000_000)


def test_section_limits_rescale() -> None:
    gpu = wl.TIERS["gpu"]
    own = dict(gpu.section_time_s)
    assert runner.section_limits(gpu, ("ops", "train")) == {
        "ops": own["ops"],
        "train": own["train"],
    }
    scaled = runner.section_limits(gpu, ("ops", "train", "scaling"), 110.0)
    share = own["ops"] / sum(own.values())
    assert sum(scaled.values()) == pytest.approx(110.0)
    assert scaled["ops"] == pytest.approx(110.0 * share)
    assert runner.section_limits(wl.TIERS["full"], ("ops",)) == {}
    assert runner.section_limits(wl.TIERS["full"], ("ops", "train"), 10.0) == {
        "ops": 5.0,
        "train": 5.0,
    }


def test_memory_budget_cap(monkeypatch) -> None:
    """CUDA: min(cap, 85% of the free device memory); the cap is the tier's."""
    free = 140 * wl.GiB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 141 * wl.GiB))
    cuda = torch.device("cuda")
    assert wl.memory_budget(cuda) == wl.MEMORY_BUDGET
    assert wl.memory_budget(cuda, wl.TIERS["gpu"].memory_cap_bytes) == 100 * wl.GiB
    free = 50 * wl.GiB
    assert wl.memory_budget(cuda, 100 * wl.GiB) == int(0.85 * free)
    assert wl.memory_budget("cpu", 1 << 20) <= 1 << 20


#: make_jacobian's CPU values, recorded before the CUDA path was added (J[:, :3] and the row
#: norms of T=3, D=1000, seed 0): the CPU inputs of the committed results must not change.
JACOBIAN_CPU_HEAD = [
    [-4.1614335775e-01, -6.9656187296e-01, -4.9988713861e-01],
    [-5.6922773365e-04, 6.1421567807e-04, -3.4530260018e-04],
    [-3.7254001945e-02, -5.3095620126e-02, 1.6053995118e-02],
]
JACOBIAN_CPU_NORMS = [20.2961604538, 0.0508674798, 1.0065979302]
JACOBIAN_CPU_BF16_HEAD = [-3.1054687500e-01, 2.9296875000e-03, 9.2285156250e-02]


def test_make_jacobian_cpu_values_unchanged() -> None:
    J = wl.make_jacobian(3, 1000, seed=0)
    torch.testing.assert_close(J[:, :3], torch.tensor(JACOBIAN_CPU_HEAD), rtol=1e-6, atol=1e-9)
    norms = J.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.tensor(JACOBIAN_CPU_NORMS, dtype=torch.float64))
    assert float(J.double().sum()) == pytest.approx(27.25946037543872, rel=1e-6)
    Jb = wl.make_jacobian(4, 64, torch.bfloat16, seed=2)
    assert Jb[0, :3].float().tolist() == JACOBIAN_CPU_BF16_HEAD


def test_jacobian_on_device_geometry() -> None:
    """The device path (here run on the CPU): the same norms and shared component."""
    J = wl._jacobian_on_device(
        9, 50_000, torch.float32, torch.device("cpu"), seed=3, spread=3.0, shared=0.5
    )
    norms = J.norm(dim=1)
    assert float(norms.max() / norms.min()) == pytest.approx(torch.e**6, rel=0.05)
    U = J / norms[:, None]
    cos = (U @ U.T)[~torch.eye(9, dtype=torch.bool)]
    assert float(cos.mean()) == pytest.approx(0.5, abs=0.05)
    # The same norms as the CPU path (in another order: the order is drawn differently).
    cpu = wl.make_jacobian(9, 50_000, seed=3).norm(dim=1)
    torch.testing.assert_close(norms.sort().values, cpu.sort().values, rtol=2e-2, atol=0)


def test_time_interleaved_event_path(host_events) -> None:
    """Event-timed rounds: a short call runs k > 1 times per block (≈ 1 ms), a long one once;
    the per-call medians are right."""

    def slow() -> None:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 3e-4:
            pass

    calls = {"fast": 0, "slow": 0}

    def fast() -> None:
        calls["fast"] += 1

    out = runner.time_interleaved(
        {"fast": fast, "slow": slow}, torch.device("cpu"), warmup=0, min_repeats=3, max_repeats=3
    )
    assert out["slow"].calls_per_sample == 1 and out["slow"].repeats == 3
    assert 2.9e-4 <= out["slow"].median_s < 2e-3
    k = out["fast"].calls_per_sample
    assert 1 < k <= runner.MAX_CALLS_PER_BLOCK
    assert calls["fast"] == 2 + 3 + 3 * k  # two warm-up calls, the calibration block, rounds
    assert out["fast"].median_s < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_time_interleaved_cuda_events() -> None:
    dev = torch.device("cuda")
    small = torch.ones(1024, device=dev)
    big = torch.ones(1 << 29, device=dev)  # 2 GiB: ~1 ms per pass even on an H200
    out = runner.time_interleaved(
        {"small": lambda: small.add_(1), "big": lambda: big.mul_(1.0)},
        dev,
        warmup=1,
        min_repeats=5,
        max_repeats=5,
    )
    assert out["small"].calls_per_sample > 1 and out["small"].median_s < 1e-4
    assert out["big"].calls_per_sample == 1 and out["big"].repeats == 5
    gbps = 2 * big.numel() * 4 / out["big"].median_s / 1e9
    assert 50 < gbps < 20_000  # read + write at the device's bandwidth


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_make_jacobian_cuda() -> None:
    J = wl.make_jacobian(9, 200_000, torch.bfloat16, "cuda", seed=3)
    assert J.device.type == "cuda" and J.dtype == torch.bfloat16 and J.shape == (9, 200_000)
    norms = J.float().norm(dim=1)
    assert float(norms.max() / norms.min()) == pytest.approx(torch.e**6, rel=0.05)
    U = J.float() / norms[:, None]
    cos = (U @ U.T)[~torch.eye(9, dtype=torch.bool, device=J.device)]
    assert float(cos.mean()) == pytest.approx(0.5, abs=0.05)
    torch.testing.assert_close(J, wl.make_jacobian(9, 200_000, torch.bfloat16, "cuda", seed=3))


def _cuda(rec: dict) -> dict:
    return {**rec, "device": "cuda"}


def test_gpu_targets_na_on_cpu_records() -> None:
    recs = [
        _record("mtl_fast", "gram", 8, 16 * 10**6, 1.0, vs_floor=1.0),
        _record("mtl_fast", "step_imtlg", 8, 16 * 10**6, 1.0, vs_floor=1.0),
        _record("reference", "step_imtlg", 8, 16 * 10**6, 3.0),
        {"section": "train", "method": "IMTLG", "family": "gradient", "T": 10, "device": "cpu"}
        | {"median_s": 1.0, "vs_equal": 1.0},
    ]
    targets = {t["id"]: t for t in report.evaluate_targets({"records": recs})}
    for tid in (
        "gpu_gram_floor",
        "gpu_step_floor",
        "gpu_step_vs_reference",
        "gpu_train_T10",
        "gpu_train_T128",
        "gpu_no_host_sync",
    ):
        assert targets[tid]["status"] == "n/a", tid


def test_gpu_targets_pass_and_miss() -> None:
    D = 16 * 10**6

    def train(method: str, T: int, vs: float) -> dict:
        return {
            "section": "train",
            "method": method,
            "family": "gradient",
            "T": T,
            "device": "cuda",
            "median_s": vs,
            "vs_equal": vs,
        }

    recs = [
        # (a) gram: T ≤ 16 and D ≥ 1e7 only; the T = 40 and D = 1e6 cells do not count.
        _cuda(_record("mtl_fast", "gram", 8, D, 1.0, vs_floor=1.2)),
        _cuda(_record("mtl_fast", "gram", 16, 64 * 10**6, 1.0, vs_floor=1.25)),
        _cuda(_record("mtl_fast", "gram", 40, D, 1.0, vs_floor=9.0)),
        _cuda(_record("mtl_fast", "gram", 8, 10**6, 1.0, vs_floor=9.0)),
        # (b) steps: one misses.
        _cuda(_record("mtl_fast", "step_imtlg", 8, D, 1.0, vs_floor=1.5)),
        _cuda(_record("mtl_fast", "step_mgda", 16, D, 1.0, vs_floor=1.7)),
        # (c) vs the reference, D ≥ 1e6.
        _cuda(_record("reference", "step_imtlg", 8, D, 2.5)),
        _cuda(_record("reference", "step_mgda", 16, D, 3.0)),
        _cuda(_record("mtl_fast", "step_imtlg", 2, 10**6, 1.0)),
        _cuda(_record("reference", "step_imtlg", 2, 10**6, 1.5)),
        # (d) training step.
        train("EqualWeighting", 10, 1.0),
        train("IMTLG", 10, 1.02),
        train("IMTL", 10, 1.01),
        train("MGDA", 10, 1.0),
        train("EqualWeighting", 128, 1.0),
        train("IMTLG", 128, 1.1),
        train("MGDA", 128, 1.2),
        # (e) captures.
        {"section": "ops", "op": "capture_step_imtlg", "impl": "mtl_fast", "device": "cuda"}
        | {"T": 8, "D": 10**6, "dtype": "fp32", "capturable": True},
        {"section": "ops", "op": "capture_step_mgda", "impl": "mtl_fast", "device": "cuda"}
        | {"T": 8, "D": 10**6, "dtype": "fp32", "capturable": True},
    ]
    targets = {t["id"]: t for t in report.evaluate_targets({"records": recs})}
    assert targets["gpu_gram_floor"]["status"] == "pass"
    assert targets["gpu_gram_floor"]["cells"] == 2
    assert targets["gpu_step_floor"]["status"] == "miss"
    assert "step_mgda T=16" in targets["gpu_step_floor"]["measured"]
    assert targets["gpu_step_vs_reference"]["status"] == "miss"
    assert targets["gpu_step_vs_reference"]["worst"] == pytest.approx(1.5)
    assert targets["gpu_train_T10"]["status"] == "pass"
    assert targets["gpu_train_T128"]["status"] == "miss"
    assert "MGDA" in targets["gpu_train_T128"]["measured"]
    assert targets["gpu_no_host_sync"]["status"] == "pass"
    # The CPU targets are not read from CUDA records.
    assert targets["cpu_train_IMTLG"]["status"] == "n/a"
    recs[-1]["capturable"] = False
    targets = {t["id"]: t for t in report.evaluate_targets({"records": recs})}
    assert targets["gpu_no_host_sync"]["status"] == "miss"


def test_gpu_tier_dry_run(tmp_path, host_events) -> None:
    """The gpu tier's code paths at tiny sizes on the CPU, timed as on CUDA (events, k calls
    per block, rotated inputs): sections, records, targets and the report."""
    results = runner.run(GPU_TINY, device="cpu")
    assert results["tier"] == "gpu" and results["sections"] == ["ops", "train", "scaling"]
    assert results["interrupted"] is None and set(results["time_limits_s"]) == set(
        results["sections"]
    )
    recs = results["records"]
    sections = {r["section"] for r in recs}
    assert sections == {"ops", "train", "scaling", "scaling_train"}
    assert not [r for r in recs if r.get("op") == "imtlg_error"]  # no precision comparison
    cells = {(r["T"], r["D"], r["dtype"]) for r in recs if r.get("op") == "gram"}
    assert cells == {(T, 512, dt) for T in (2, 24) for dt in ("fp32", "bf16")}
    assert any(r.get("calls_per_sample", 1) > 1 for r in recs)
    reused = [r for r in recs if r["section"] == "scaling" and r.get("reused_from") == "ops"]
    assert {r["T"] for r in reused} == {2}
    assert {r["T"] for r in recs if r["section"] == "scaling"} == {2, 4}
    paths = report.write(results, tmp_path)
    assert paths["json"].name.endswith("-gpu.json") and paths["png"].exists()
    md = paths["md"].read_text()
    assert "Time limits per section" in md and "## Loss statistics" not in md
    for heading in ("## Targets", "## Ops", "### Full IMTL-G step", "## Training step"):
        assert heading in md
    assert {t["status"] for t in json.loads(paths["json"].read_text())["targets"]} <= {
        "pass",
        "miss",
        "n/a",
    }


def test_time_limit_skips_cells() -> None:
    tier = dataclasses.replace(GPU_TINY, section_time_s=(("ops", 0.0), ("train", 0.0)))
    results = runner.run(tier, sections=["ops", "train"], device="cpu")
    reasons = [s for s in results["skipped"] if s["reason"] == "time limit of the section"]
    assert {s["section"] for s in reasons} == {"ops", "train"}
    assert results["records"] == []  # a cell starts only while time is left
    assert runner.run(TINY, sections=["train"], device="cpu", time_limit_s=1e-9)["records"] == []


def test_interrupt_and_failure_keep_measured_records(monkeypatch) -> None:
    """SIGINT (KeyboardInterrupt) during a section: the run ends with what was measured; an
    exception: the section is listed as failed and the next one runs."""
    original = runner._train_records

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_train_records", interrupt)
    results = runner.run(TINY, sections=["ops", "train", "stats"], device="cpu")
    assert results["interrupted"] == "train" and results["sections"] == ["ops", "train", "stats"]
    assert {r["section"] for r in results["records"]} == {"ops"}
    assert "**Interrupted** during section train" in report.markdown(results)

    def fail(ctx, section, names, Ts, skipped):
        ctx.keep({"section": "train", "method": "x", "T": 1})
        raise RuntimeError("boom")

    monkeypatch.setattr(runner, "_train_records", fail)
    results = runner.run(TINY, sections=["train", "stats"], device="cpu")
    assert results["interrupted"] is None
    assert {r["section"] for r in results["records"]} == {"train", "stats"}
    assert any("boom" in s["reason"] for s in results["skipped"])
    monkeypatch.setattr(runner, "_train_records", original)


def test_stems_do_not_collide() -> None:
    base = {"machine_slug": "nvidia-h200", "date": "2026-01-01"}
    assert report.stem({**base, "tier": "full"}) == "nvidia-h200-2026-01-01"
    assert report.stem({**base, "tier": "gpu"}) == "nvidia-h200-2026-01-01-gpu"
    info = {"gpu": "NVIDIA H200", "cpu": "x", "cores": 16}
    assert runner.machine_slug(info) == "nvidia-h200"


def test_cli_gpu_tier(tmp_path, monkeypatch, capsys, host_events) -> None:
    """``mtl-fast bench --tier gpu`` end to end (sizes shrunk): stats is not run by default."""
    from mtl_fast.cli import main

    tier = dataclasses.replace(GPU_TINY, ops_T=(2,), ops_dtypes=("fp32",), scaling_T=(2,))
    monkeypatch.setitem(wl.TIERS, "gpu", tier)
    args = ["bench", "--tier", "gpu", "--device", "cpu", "--out", str(tmp_path), "-q"]
    assert main([*args, "--no-plot", "--time-limit", "60"]) == 0
    assert "| target | status | measured |" in capsys.readouterr().out
    data = json.loads(next(tmp_path.glob("*-gpu.json")).read_text())
    assert data["sections"] == ["ops", "train", "scaling"]
    assert sum(data["time_limits_s"].values()) == pytest.approx(60.0)


def _structured():
    """benchmarks/bench_structured.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_structured.py"
    spec = importlib.util.spec_from_file_location("_bench_structured_under_test", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while defined
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_structured_gpu_tier(host_events) -> None:
    """bench_structured's gpu tier: its sizes, the memory skip, the event-timed table run at
    tiny sizes, the time limit."""
    bs = _structured()
    assert bs.SIZES["gpu"] == ((256, 1024, 4096), 256, 512)
    cpu = torch.device("cpu")
    case = bs.Case("IMTLG", "jacobian", 1024, 256, 512)  # 0.5 GiB of feature gradients (×2)
    assert bs.skip_reason(case, cpu, budget=100 * wl.GiB) is None
    assert "memory" in bs.skip_reason(case, cpu, budget=wl.GiB // 2)
    big = bs.Case("IMTLG", "jacobian", 4096, 256, 512)  # 2 GiB (×2): fits an H200's budget
    assert bs.skip_reason(big, torch.device("cuda"), budget=100 * wl.GiB) is None
    results = bs.run("gpu", cpu, progress=lambda _: None, time_limit_s=60, sizes=((4,), 8, 16))
    assert {(r["method"], r["route"]) for r in results["records"]} == {
        (m, r) for m in bs.METHODS for r in bs.ROUTES
    }
    assert all(r["cpu_s"] is None and r["wall_s"] > 0 for r in results["records"])
    assert "| T | method |" in bs.markdown(results)
    late = bs.run("gpu", cpu, progress=lambda _: None, time_limit_s=0.0, sizes=((4,), 8, 16))
    assert late["records"] == [] and len(late["skipped"]) == len(bs.METHODS) * len(bs.ROUTES)


def test_time_interleaved_stops_at_deadline() -> None:
    """Past ``stop_at`` a measurement ends after 3 rounds; ``max_s`` bounds slow calls' rounds."""
    cpu = torch.device("cpu")
    out = runner.time_interleaved({"f": lambda: None}, cpu, min_repeats=10, stop_at=0.0)
    assert out["f"].repeats == 3

    def slow() -> None:
        time.sleep(0.02)

    out = runner.time_interleaved({"s": slow}, cpu, min_repeats=10, budget_s=0.0, max_s=0.1)
    assert 3 <= out["s"].repeats <= 5


def test_profile_step_dry_run(tmp_path) -> None:
    """benchmarks/profile_step.py runs end to end on the CPU (smoke tier) and writes its JSON."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["--device", "cpu", "--tier", "smoke", "--T", "2", "--reps", "1", "--top", "3"]
    argv += ["--methods", "IMTLG", "--profile", "IMTLG", "--out", str(tmp_path)]
    assert module.main(argv) == 0
    doc = json.loads((tmp_path / "profile-step-cpu-T2.json").read_text())
    assert [r["method"] for r in doc["rows"]] == ["EqualWeighting", "IMTLG"]
    assert doc["rows"][1]["host_ops"] and doc["rows"][0]["vs_equal"] == 1.0


# --------------------------------------------------------------------------- engine


def test_engine_cli_smoke_writes_the_report(tmp_path, capsys) -> None:
    """``mtl-fast bench --engine --tier smoke`` end to end: every part measured, the targets
    table printed and written with the machine."""
    from benchmarks.harness import engine
    from mtl_fast.cli import main
    from mtl_fast.methods import registry

    assert main(["bench", "--engine", "--tier", "smoke", "--out", str(tmp_path), "-q"]) == 0
    assert "| target | status | measured |" in capsys.readouterr().out
    data = json.loads(next(tmp_path.glob("cpu-engine-*-smoke.json")).read_text())
    tier = engine.TIERS["smoke"]
    assert [(r["T"], r["D"]) for r in data["steps"]] == [
        (T, D) for D in tier.step_D for T in tier.step_T
    ]
    assert data["floor"]["bandwidth"] > 0 and data["floor"]["gemm_flops"] > 0
    assert {r["method"] for r in data["train"]} == set(engine.TRAIN_METHODS)
    loss_methods = {s.name for s in registry.REGISTRY if s.family == "loss"}
    assert {r["method"] for r in data["loss"]} == loss_methods
    assert all(r["mtl_fast"] <= 1 for r in data["accuracy"])
    assert {t["status"] for t in data["targets"]} <= {"pass", "miss", "n/a"}
    md = next(tmp_path.glob("cpu-engine-*-smoke.md")).read_text()
    for heading in ("## Targets", "## Full IMTL-G step", "## Training step", "## Loss-based"):
        assert heading in md


def test_engine_targets_name_every_missed_cell() -> None:
    from benchmarks.harness import engine

    steps = [
        {"T": 2, "D": 10**6, "mtl_fast_step_s": 1.0, "step_floor_s": 0.9, "torchjd_step_s": 2.0},
        {"T": 64, "D": 10**6, "mtl_fast_step_s": 2.0, "step_floor_s": 1.0, "torchjd_step_s": 2.2},
        {"T": 64, "D": 10**5, "mtl_fast_step_s": 5.0, "step_floor_s": 1.0, "torchjd_step_s": 9.0},
    ]
    train = [
        {"model": "mlp", "D": 16384, "method": m, "vs_equal": v}
        for m, v in (("IMTLG", 1.05), ("MGDA", 1.2))
    ]
    loss = [{"method": "CVWeighting", "T": 10, "overhead_us": 120.0}]
    targets = engine.evaluate_targets({"steps": steps, "train": train, "loss": loss})
    t = {x["target"]: x for x in targets}
    floor = next(x for x in t.values() if "floor" in x["target"])
    assert floor["status"] == "miss" and "T=64 D=1e+06 (2.00x floor)" in floor["measured"]
    assert "2 cells" in floor["measured"]  # D = 10⁵ is not part of the floor target
    jd = next(x for x in t.values() if "torchjd" in x["target"])
    assert jd["status"] == "miss" and "T=64 D=1e+06" in jd["measured"]
    statuses = [x["status"] for x in t.values() if "MLP" in x["target"]]
    assert statuses == ["pass", "miss"]
    assert next(x for x in t.values() if "loss-based" in x["target"])["status"] == "miss"
    assert next(x for x in t.values() if "Gram error" in x["target"])["status"] == "n/a"
