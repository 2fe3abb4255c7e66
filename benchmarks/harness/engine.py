r"""The CPU engine benchmark: ``mtl-fast bench --engine`` (``python -m benchmarks.harness
--engine``), one run that measures side by side, with the machine recorded:

* the **machine's floor**: read bandwidth (``x.sum()`` over a large buffer) and the SGEMM rate
  (n×n fp32 ``a @ b``), measured in the same run;
* the **full IMTL-G step** (J → G → α → Σ α_t g_t, ``mf.combine(J, mf.imtl_g_weights(mf.gram(J)))``)
  and the **Gram matrix** alone, against that floor and against torchjd's ``IMTLG()(J)`` and its
  Gramian, over T ∈ {2, 4, …, 128} × D ∈ {10⁵, 10⁶, 4·10⁶} (fp32, J one stacked tensor). Floor of
  the step: the Gram pass (reading J once, or T²·D/2 multiply-adds at the SGEMM rate, whichever
  takes longer) plus the combine pass (reading J once and writing the result);
* the **Gram error** against a float64 oracle (J Jᵀ of the exact input values), relative to the
  documented bound 2 (n + 2) u |J||J|ᵀ (n = 1024 columns per fp32 block, u = 2⁻²⁴), next to the
  reference implementation's error;
* the **training step** on an MLP (x [64, 128] → Linear(128, C) → ReLU → Linear(C, C) → ReLU =
  z [64, C], D = 64·C from 4096 to 262144; T = 10 linear heads, even tasks MSE, odd tasks 10-way
  cross-entropy, losses scaled by 10^u, u ∈ [−3, 3]; SGD) with IMTL-G, IMTL and MGDA against
  equal weighting, and on the harness' conv model (:mod:`benchmarks.harness.workloads`, T = 10);
* the **loss-based overhead**: µs of ``method.loss(losses).backward()`` over
  ``torch.stack(losses).sum().backward()`` on the same T = 10 scalar losses, for every
  loss-based method of the registry (brought to its steady state first: accuracies observed,
  warm-up epochs done).

Timing: interleaved rounds (the order rotated each round), medians; the µs-scale loss steps in
blocks of calls. Results: ``benchmarks/results/cpu-engine-<machine>-<date>[-<tier>].{json,md}``
with the targets table (pass / miss per cell). Tiers: ``full`` (the plan above, a few minutes
on a 2-core CPU), ``quick`` (fewer cells and rounds), ``smoke`` (tiny; what the tests run).
"""

from __future__ import annotations

import datetime
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import runner
from . import workloads as wl

Progress = Callable[[str], None]


@dataclass(frozen=True)
class EngineTier:
    """Sizes and repeats of one engine run."""

    name: str
    step_T: tuple[int, ...]
    step_D: tuple[int, ...]
    accuracy_cells: tuple[tuple[int, int], ...]
    mlp_widths: tuple[int, ...]
    conv: bool
    loss_T: int
    rounds: int
    train_rounds: int
    loss_rounds: int
    loss_block: int
    floor_bytes: int
    gemm_n: int


TIERS: dict[str, EngineTier] = {
    "full": EngineTier(
        name="full",
        step_T=(2, 4, 8, 16, 32, 64, 128),
        step_D=(100_000, 1_000_000, 4_000_000),
        accuracy_cells=((4, 1_000_000), (32, 1_000_000), (128, 1_000_000)),
        mlp_widths=(64, 256, 1024, 4096),
        conv=True,
        loss_T=10,
        rounds=7,
        train_rounds=15,
        loss_rounds=25,
        loss_block=40,
        floor_bytes=1 << 30,
        gemm_n=4096,
    ),
    "quick": EngineTier(
        name="quick",
        step_T=(2, 8, 32, 128),
        step_D=(100_000, 1_000_000),
        accuracy_cells=((8, 100_000), (64, 100_000)),
        mlp_widths=(64, 256),
        conv=False,
        loss_T=10,
        rounds=3,
        train_rounds=7,
        loss_rounds=9,
        loss_block=20,
        floor_bytes=1 << 28,
        gemm_n=2048,
    ),
    "smoke": EngineTier(
        name="smoke",
        step_T=(2, 8),
        step_D=(4096,),
        accuracy_cells=((3, 3000),),
        mlp_widths=(8,),
        conv=False,
        loss_T=4,
        rounds=1,
        train_rounds=1,
        loss_rounds=1,
        loss_block=2,
        floor_bytes=1 << 22,
        gemm_n=256,
    ),
}

#: The targets (docs: the README's performance section).
STEP_FLOOR_MAX = 1.6  # full IMTL-G step / floor, D >= FLOOR_MIN_D
FLOOR_MIN_D = 1_000_000
TORCHJD_MIN_SPEEDUP = 1.3  # torchjd step / mtl_fast step, every cell
TRAIN_MAX = 1.10  # IMTL-G / MGDA training step / equal weighting, MLP at T = 10, D = 16384
TRAIN_D = 16384
LOSS_MAX_US = 100.0  # loss-based overhead over a plain sum, T = 10
#: Gram matrices are accumulated in fp32 blocks of at most this many columns per lane.
GRAM_BLOCK = 1024


# --------------------------------------------------------------------------- timing


def _median_times(fns: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per callable, interleaved rounds (order rotated); one warm-up each."""
    t = runner.time_interleaved(
        fns,
        torch.device("cpu"),
        warmup=1,
        min_repeats=rounds,
        max_repeats=rounds,
        budget_s=0.0,
    )
    return {k: v.median_s for k, v in t.items()}


def _block_medians(fns: dict[str, Callable[[], Any]], rounds: int, block: int) -> dict[str, float]:
    """Median seconds per call of µs-scale callables: each round times a block of ``block``
    calls of each callable in turn (order rotated)."""
    names = list(fns)
    for f in fns.values():
        for _ in range(max(2, block // 2)):
            f()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            f = fns[name]
            t0 = time.perf_counter()
            for _ in range(block):
                f()
            times[name].append((time.perf_counter() - t0) / block)
    return {k: statistics.median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- floor


def machine_floor(tier: EngineTier) -> dict[str, float]:
    """Read bandwidth (bytes/s of ``x.sum()``) and SGEMM rate (FLOP/s of an n×n fp32 product)
    on torch's threads, measured now."""
    x = torch.ones(tier.floor_bytes // 4)
    n = tier.gemm_n
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = _median_times({"sum": lambda: x.sum(), "gemm": lambda: a @ b}, max(5, tier.rounds))
    return {"bandwidth": x.numel() * 4 / t["sum"], "gemm_flops": 2 * n**3 / t["gemm"]}


def step_floor_s(T: int, D: int, floor: dict[str, float]) -> float:
    """Seconds of an ideal full step on this machine: the Gram pass (read J, or T²·D/2 FMAs at
    the SGEMM rate) plus the combine pass (read J, write D values), fp32."""
    read = T * D * 4 / floor["bandwidth"]
    return max(read, T * T * D / floor["gemm_flops"]) + read + D * 4 / floor["bandwidth"]


def gram_floor_s(T: int, D: int, floor: dict[str, float]) -> float:
    """Seconds of an ideal Gram pass: reading J once or T²·D/2 FMAs, whichever is longer."""
    return max(T * D * 4 / floor["bandwidth"], T * T * D / floor["gemm_flops"])


# --------------------------------------------------------------------------- steps


def _torchjd_fns(J: Tensor) -> dict[str, Callable[[], Any]]:
    if not wl.torchjd_available():
        return {}
    from torchjd.aggregation import IMTLG

    try:
        from torchjd._linalg import compute_gramian

        gramian: Callable[[Tensor], Tensor] = compute_gramian
    except ImportError:  # a private helper: the same product
        gramian = lambda m: m @ m.T
    imtlg = IMTLG()
    return {"torchjd_step": lambda: imtlg(J), "torchjd_gram": lambda: gramian(J)}


def _step_cell(T: int, D: int, tier: EngineTier, floor: dict[str, float]) -> dict[str, Any]:
    import mtl_fast as mf

    J = wl.make_jacobian(T, D, torch.float32, "cpu", seed=T + D)
    fns: dict[str, Callable[[], Any]] = {
        "mtl_fast_step": lambda: mf.combine(J, mf.imtl_g_weights(mf.gram(J))),
        "mtl_fast_gram": lambda: mf.gram(J),
        **_torchjd_fns(J),
    }
    t = _median_times(fns, tier.rounds)
    rec: dict[str, Any] = {"T": T, "D": D, **{f"{k}_s": v for k, v in t.items()}}
    rec["step_floor_s"] = step_floor_s(T, D, floor)
    rec["gram_floor_s"] = gram_floor_s(T, D, floor)
    return rec


def bench_steps(tier: EngineTier, floor: dict[str, float], progress: Progress) -> list[dict]:
    """The full IMTL-G step and the Gram matrix of each (T, D) cell, mtl_fast and torchjd."""
    records = []
    for D in tier.step_D:
        for T in tier.step_T:
            rec = _step_cell(T, D, tier, floor)
            records.append(rec)
            step = rec["mtl_fast_step_s"]
            jd = rec.get("torchjd_step_s")
            progress(
                f"  T={T} D={D:.0e}: step {step * 1e3:.3g} ms "
                f"({step / rec['step_floor_s']:.2f}x floor"
                + ("" if jd is None else f", torchjd {jd / step:.2f}x slower")
                + ")"
            )
    return records


def _accuracy_cell(T: int, D: int) -> dict[str, Any]:
    import mtl_fast as mf
    from mtl_fast import reference

    J = wl.make_jacobian(T, D, torch.float32, "cpu", seed=7 * T + D)
    J64 = J.double()
    exact = J64 @ J64.T
    bound = 2 * (GRAM_BLOCK + 2) * 2.0**-24 * (J64.abs() @ J64.abs().T)
    G = mf.gram(J).double()
    return {
        "T": T,
        "D": D,
        "mtl_fast": float(((G - exact).abs() / bound).max()),
        "reference": float(((reference.gram(J).double() - exact).abs() / bound).max()),
        "rel_mtl_fast": float((G - exact).abs().max() / exact.abs().max()),
    }


def bench_accuracy(tier: EngineTier) -> list[dict]:
    """Max entrywise |G − J Jᵀ| / (2 (n + 2) u |J||J|ᵀ) of mtl_fast's Gram matrix and of the
    reference's (fp32 J; J Jᵀ of its exact values in float64)."""
    return [_accuracy_cell(T, D) for T, D in tier.accuracy_cells]


# --------------------------------------------------------------------------- training


class MLPSetup:
    """The MLP training step of the module docstring (one batch, fixed; SGD at a tiny rate so
    that the timing does not drift)."""

    B, IN, T = 64, 128, 10

    def __init__(self, width: int, T: int = 10, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.T = T
        self.encoder = nn.Sequential(
            nn.Linear(self.IN, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.heads = nn.ModuleList(
            nn.Linear(width, 1 if t % 2 == 0 else wl.NUM_CLASSES) for t in range(T)
        )
        self.x = torch.randn(self.B, self.IN, generator=gen)
        self.targets = [
            torch.randn(self.B, generator=gen)
            if t % 2 == 0
            else torch.randint(0, wl.NUM_CLASSES, (self.B,), generator=gen)
            for t in range(T)
        ]
        self.scales = [10.0**v for v in torch.linspace(-3, 3, T).tolist()]
        self.feature_numel = self.B * width

    def task_loss(self, t: int, out: Tensor) -> Tensor:
        return wl.scaled_task_loss(t, out, self.targets, self.scales)

    def step_fn(self, method: Any) -> Callable[[], Any]:
        params = [*self.encoder.parameters(), *self.heads.parameters(), *method.parameters()]
        opt = torch.optim.SGD(params, lr=wl.TRAIN_LR)
        return wl.method_train_step(
            method, self.T, self.encoder, self.heads, self.task_loss, self.x, opt
        )


TRAIN_METHODS = ("EqualWeighting", "IMTLG", "IMTL", "MGDA")


def _mlp_maker(setup: MLPSetup) -> Callable[[str], Callable[[], Any]]:
    return lambda name: setup.step_fn(wl.build_method(name, setup.T))


def bench_train(tier: EngineTier, progress: Progress) -> list[dict]:
    """Training step time per method and model, with its ratio to equal weighting."""
    records = []
    models: list[tuple[str, int, Callable[[str], Callable[[], Any]]]] = []
    for width in tier.mlp_widths:
        setup = MLPSetup(width)
        models.append(("mlp", setup.feature_numel, _mlp_maker(setup)))
    if tier.conv:
        conv_tier = wl.get_tier("quick")
        probe = wl.make_train_setup(10, conv_tier)
        models.append(
            (
                "conv",
                probe.feature_numel(),
                lambda n: wl.make_method_step(n, 10, conv_tier, "cpu").step,
            )
        )
    for model, D, make in models:
        fns = {name: make(name) for name in TRAIN_METHODS}
        t = _median_times(fns, tier.train_rounds)
        base = t["EqualWeighting"]
        for name, s in t.items():
            records.append(
                {"model": model, "T": 10, "D": D, "method": name, "step_s": s, "vs_equal": s / base}
            )
        progress(
            f"  {model} D={D}: equal {base * 1e3:.3g} ms, "
            + ", ".join(f"{n} {t[n] / base:.2f}x" for n in TRAIN_METHODS[1:])
        )
    return records


# --------------------------------------------------------------------------- loss-based


class _Lifecycle:
    """What :func:`benchmarks.harness.workloads._prepare` needs of a training setup."""

    def __init__(self, T: int) -> None:
        self.T = T
        self.scales = [10.0**v for v in torch.linspace(-3, 3, T).tolist()]
        self.device = torch.device("cpu")


def bench_loss(tier: EngineTier, progress: Progress) -> list[dict]:
    """µs of ``method.loss(losses).backward()`` over ``torch.stack(losses).sum().backward()``
    for every loss-based method of the registry, T scalar losses from one leaf."""
    from mtl_fast.methods import registry

    T = tier.loss_T
    leaf = nn.Parameter(torch.rand(T) + 0.5)
    scales = torch.logspace(-3, 3, T)

    def losses() -> list[Tensor]:
        return [leaf[t] * scales[t] for t in range(T)]

    def plain() -> None:
        torch.stack(losses()).sum().backward()

    fns: dict[str, Callable[[], Any]] = {"plain sum": plain}
    for spec in registry.REGISTRY:
        if spec.family != "loss":
            continue
        method = wl.build_method(spec.name, T)
        wl._prepare(method, _Lifecycle(T))  # type: ignore[arg-type]

        def step(m: Any = method) -> None:
            m.loss(losses()).backward()

        fns[spec.name] = step
    t = _block_medians(fns, tier.loss_rounds, tier.loss_block)
    base = t["plain sum"]
    records = [
        {"method": name, "T": T, "step_s": s, "overhead_us": (s - base) * 1e6}
        for name, s in t.items()
        if name != "plain sum"
    ]
    progress(
        f"  plain sum {base * 1e6:.0f} us; "
        + ", ".join(f"{r['method']} +{r['overhead_us']:.0f}" for r in records)
    )
    return records


# --------------------------------------------------------------------------- targets


def _cells(items: list[str], limit: int = 6) -> str:
    return ", ".join(items[:limit]) + (" …" if len(items) > limit else "")


def evaluate_targets(results: dict[str, Any]) -> list[dict[str, str]]:
    """The targets with pass / miss and the measured numbers (every cell named on a miss)."""
    out: list[dict[str, str]] = []

    def add(
        name: str,
        values: list[tuple[str, float]],
        ok: Callable[[float], bool],
        fmt: str,
        higher_is_better: bool = False,
    ) -> None:
        if not values:
            out.append({"target": name, "status": "n/a", "measured": "no data"})
            return
        misses = [f"{c} ({fmt.format(v)})" for c, v in values if not ok(v)]
        pick = min if higher_is_better else max
        worst = pick(values, key=lambda cv: cv[1])
        text = f"worst {fmt.format(worst[1])} ({worst[0]}); {len(values)} cells"
        if misses:
            text += f"; missed at {_cells(misses)}"
        out.append({"target": name, "status": "miss" if misses else "pass", "measured": text})

    steps = results.get("steps", [])
    add(
        f"full IMTL-G step ≤ {STEP_FLOOR_MAX}× the floor, D ≥ 10⁶",
        [
            (f"T={r['T']} D={r['D']:.0e}", r["mtl_fast_step_s"] / r["step_floor_s"])
            for r in steps
            if r["D"] >= FLOOR_MIN_D
        ],
        lambda v: v <= STEP_FLOOR_MAX,
        "{:.2f}x floor",
    )
    add(
        f"full IMTL-G step ≥ {TORCHJD_MIN_SPEEDUP}× faster than torchjd, every cell",
        [
            (f"T={r['T']} D={r['D']:.0e}", r["torchjd_step_s"] / r["mtl_fast_step_s"])
            for r in steps
            if "torchjd_step_s" in r
        ],
        lambda v: v >= TORCHJD_MIN_SPEEDUP,
        "{:.2f}x faster",
        higher_is_better=True,
    )
    train = results.get("train", [])
    for name in ("IMTLG", "MGDA"):
        add(
            f"MLP training step {name} ≤ {TRAIN_MAX}× equal weighting, T = 10, D = {TRAIN_D}",
            [
                (f"D={r['D']}", r["vs_equal"])
                for r in train
                if r["model"] == "mlp" and r["method"] == name and r["D"] == TRAIN_D
            ],
            lambda v: v <= TRAIN_MAX,
            "{:.2f}x",
        )
    add(
        f"every loss-based method ≤ {LOSS_MAX_US:.0f} µs over a plain sum, T = 10",
        [(r["method"], r["overhead_us"]) for r in results.get("loss", []) if r["T"] == 10],
        lambda v: v <= LOSS_MAX_US,
        "{:.0f} µs",
    )
    add(
        "Gram error vs float64 within the documented bound (error / bound ≤ 1) and ≤ the "
        "reference's",
        [
            (f"T={r['T']} D={r['D']:.0e}", r["mtl_fast"] / max(1.0, r["reference"]))
            for r in results.get("accuracy", [])
        ],
        lambda v: v <= 1.0,
        "{:.3f}",
    )
    return out


# --------------------------------------------------------------------------- report


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def markdown(results: dict[str, Any]) -> str:
    """The report: machine, floor, targets, then the tables."""
    m = results["machine"]
    fl = results["floor"]
    L = [
        f"# CPU engine benchmark ({results['tier']} tier, {results['date']})",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch "
        f"{m['torch']}, torchjd {m.get('torchjd') or 'not installed'}, ISA "
        f"{results['isa']}, commit {(m.get('git_commit') or 'unknown')[:12]}; load average "
        f"before the run {results['load_before']}, after {results['load_after']}; "
        f"{results['duration_s']:.0f} s.",
        "",
        f"Floor measured in this run: read bandwidth {fl['bandwidth'] / 1e9:.1f} GB/s "
        f"(`x.sum()`), SGEMM {fl['gemm_flops'] / 1e9:.0f} GFLOP/s.",
        "",
        f"Command: `{results['command']}`. Ratios: ×floor = time / floor; torchjd/mtl_fast > 1 "
        "means mtl_fast is faster. Interleaved rounds, medians.",
        "",
        "## Targets",
        "",
        *_table(
            ["target", "status", "measured"],
            [
                [
                    t["target"],
                    "pass" if t["status"] == "pass" else f"**{t['status']}**",
                    t["measured"],
                ]
                for t in results["targets"]
            ],
        ),
        "",
        "## Full IMTL-G step and Gram matrix (fp32)",
        "",
    ]
    rows = []
    for r in results["steps"]:
        s, g = r["mtl_fast_step_s"], r["mtl_fast_gram_s"]
        jd_s, jd_g = r.get("torchjd_step_s"), r.get("torchjd_gram_s")
        rows.append(
            [
                str(r["T"]),
                f"{r['D']:.0e}",
                f"{s * 1e3:.3g}",
                f"{s / r['step_floor_s']:.2f}",
                "n/a" if jd_s is None else f"{jd_s / s:.2f}",
                f"{g * 1e3:.3g}",
                f"{g / r['gram_floor_s']:.2f}",
                "n/a" if jd_g is None else f"{jd_g / g:.2f}",
            ]
        )
    L += _table(
        [
            "T",
            "D",
            "step ms",
            "×floor",
            "torchjd/mtl_fast",
            "gram ms",
            "×floor",
            "torchjd/mtl_fast",
        ],
        rows,
    )
    L += ["", "## Gram error against float64", ""]
    L += _table(
        ["T", "D", "mtl_fast error / bound", "reference error / bound", "mtl_fast max rel."],
        [
            [
                str(r["T"]),
                f"{r['D']:.0e}",
                f"{r['mtl_fast']:.4f}",
                f"{r['reference']:.4f}",
                f"{r['rel_mtl_fast']:.2e}",
            ]
            for r in results["accuracy"]
        ],
    )
    L += ["", "## Training step, T = 10 (ratio to equal weighting)", ""]
    by_model: dict[tuple[str, int], dict[str, dict]] = {}
    for r in results["train"]:
        by_model.setdefault((r["model"], r["D"]), {})[r["method"]] = r
    rows = []
    for (model, D), recs in by_model.items():
        base = recs["EqualWeighting"]["step_s"]
        rows.append(
            [model, str(D), f"{base * 1e3:.3g}"]
            + [
                f"{recs[n]['vs_equal']:.3f} (+{(recs[n]['step_s'] - base) * 1e6:.0f} µs)"
                if n in recs
                else "n/a"
                for n in TRAIN_METHODS[1:]
            ]
        )
    L += _table(["model", "D", "equal ms", *TRAIN_METHODS[1:]], rows)
    L += ["", "## Loss-based overhead over a plain sum (µs per loss() + backward)", ""]
    loss = results["loss"]
    if loss:
        L.append(
            f"Plain sum of T = {loss[0]['T']} losses: "
            f"{(loss[0]['step_s'] - loss[0]['overhead_us'] * 1e-6) * 1e6:.0f} µs."
        )
        L.append("")
    L += _table(
        ["method", "µs over plain", "step µs"],
        [[r["method"], f"{r['overhead_us']:.0f}", f"{r['step_s'] * 1e6:.0f}"] for r in loss],
    )
    return "\n".join(L) + "\n"


# --------------------------------------------------------------------------- run


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(tier: str | EngineTier = "full", progress: Progress | None = None) -> dict[str, Any]:
    """Every part of the benchmark (module docstring); the results document."""
    import mtl_fast._C as C

    if not isinstance(tier, EngineTier):
        if tier not in TIERS:
            raise runner.BenchError(f"unknown engine tier {tier!r}; expected one of {list(TIERS)}")
        tier = TIERS[tier]
    say = progress or (lambda _: None)
    started = time.time()
    load_before = _load()
    info = runner.machine_info(torch.device("cpu"))
    say(f"mtl-fast bench --engine: tier {tier.name}, {info['cpu']}, load {load_before}")
    floor = machine_floor(tier)
    say(
        f"  floor: {floor['bandwidth'] / 1e9:.1f} GB/s read, "
        f"{floor['gemm_flops'] / 1e9:.0f} GFLOP/s SGEMM"
    )
    say("[steps]")
    steps = bench_steps(tier, floor, say)
    say("[accuracy]")
    accuracy = bench_accuracy(tier)
    say("[train]")
    train = bench_train(tier, say)
    say("[loss]")
    loss = bench_loss(tier, say)
    results: dict[str, Any] = {
        "schema": 1,
        "kind": "cpu-engine",
        "tier": tier.name,
        "tier_config": asdict(tier),
        "date": datetime.date.today().isoformat(),
        "command": "mtl-fast bench --engine"
        + ("" if tier.name == "full" else f" --tier {tier.name}"),
        "machine": info,
        "machine_slug": runner.machine_slug(info),
        "isa": C.cpu_isa(),
        "load_before": load_before,
        "floor": floor,
        "steps": steps,
        "accuracy": accuracy,
        "train": train,
        "loss": loss,
    }
    results["load_after"] = _load()
    results["duration_s"] = time.time() - started
    results["targets"] = evaluate_targets(results)
    return results


def write(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``<out>/cpu-engine-<machine>-<date>[-<tier>].{json,md}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if results["tier"] == "full" else f"-{results['tier']}"
    stem = out / f"cpu-engine-{results['machine_slug']}-{results['date']}{suffix}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(results))
    js.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return {"markdown": md, "json": js}


def targets_lines(results: dict[str, Any]) -> list[str]:
    return _table(
        ["target", "status", "measured"],
        [[t["target"], t["status"], t["measured"]] for t in results["targets"]],
    )


__all__ = ["TIERS", "EngineTier", "evaluate_targets", "markdown", "run", "write"]
