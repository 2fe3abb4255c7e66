r"""What the benchmarks measure: tiers, inputs, the implementations side by side, the training
model and tasks, the method registry and the loss-statistics steps.

Shared by ``mtl-fast bench`` (:mod:`benchmarks.harness.runner`) and the pytest-benchmark suites in
``benchmarks/``: both time the callables built here.

Tiers (:data:`TIERS`, chosen by ``--tier`` / ``--quick`` or the environment variable
``MTL_FAST_BENCH_TIER``):

* ``smoke`` — tiny sizes; what CI runs (``pytest benchmarks --benchmark-disable``) so the suites
  keep working;
* ``quick`` — ``mtl-fast bench --quick``, under two minutes on a 2-core CPU;
* ``full`` — every size of the benchmark plan that fits the memory budget (24 GiB, or less when the
  machine has less free); what does not fit is listed as skipped, with the bytes it needed;
* ``gpu`` — the sizes a CUDA device needs, in about four minutes on an H200 (Triton compiles
  included): ops up to D = 1.6·10⁷ (6.4·10⁷ for T ≤ 16) in fp32 and bf16, the training step of a
  GPU-sized model (batch 64 of 128×128 images) for T up to 128, the IMTL-G step for T up to
  4096; a 100 GiB memory cap; per-section time limits (what does not fit is listed as skipped);
  no precision comparison and no loss statistics (CPU measurements, done by the other tiers).

Ops inputs: the T task gradients as one stacked, contiguous [T, D] tensor J — the natural input
of torchjd (its Jacobian) and of LibMTL-style code (its gathered ``grads`` matrix), read in
place by mtl_fast. Rows have norms spread over e^±3 and share a common component (cosine 0.5
between the rows), the regime where gradient balancing matters.
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import Tensor, nn

from . import TIER_ENV, libmtl_style

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting

GiB = 1024**3

# --------------------------------------------------------------------------- tiers


@dataclass(frozen=True)
class Tier:
    """The sizes and repeat policy of one benchmark tier."""

    name: str
    #: ops: the T and D grid, the dtypes; ``gpu_extra_D`` is added on CUDA, for T ≤
    #: ``gpu_extra_D_max_T`` only when that is set.
    ops_T: tuple[int, ...]
    ops_D: tuple[int, ...]
    ops_dtypes: tuple[str, ...]
    gpu_extra_D: tuple[int, ...] = ()
    gpu_extra_D_max_T: int | None = None
    #: whether the ops section runs the float64-oracle precision comparison (a CPU measurement).
    precision: bool = True
    #: T of the float64-oracle precision comparison (IMTL-G weights) and its D.
    precision_T: tuple[int, ...] = (2, 8, 64)
    precision_D: int = 20_000
    precision_seeds: int = 3
    #: training step: T, the model (channel width, image side, batch), the methods (``None``:
    #: every method of :data:`METHOD_NAMES` and the LibMTL-style steps) and the warm-up steps.
    train_T: tuple[int, ...] = (10,)
    train_width: int = 32
    train_image: int = 64
    train_batch: int = 32
    train_methods: tuple[str, ...] | None = None
    train_warmup: int = 2
    train_min_repeats: int = 5
    #: loss statistics: T and steps per timed repeat.
    stats_T: tuple[int, ...] = (3, 40, 1000)
    stats_steps: int = 50
    #: scaling in T: full IMTL-G step at fixed D, and the training step.
    scaling_T: tuple[int, ...] = (2, 8, 32, 128)
    scaling_D: int = 100_000
    scaling_train_T: tuple[int, ...] = ()
    #: timing policy: warm-up calls, repeats (min, max) and a time budget per measurement.
    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    budget_s: float = 0.5
    #: peak-memory measurement of the D-sized ops (gram, combine, steps).
    memory: bool = True
    #: bytes of the copy used to measure the machine's copy bandwidth.
    copy_bytes: int = 256 * 1024**2
    #: upper bound of the memory budget (lowered to 85% of what the device has free).
    memory_cap_bytes: int = 24 * GiB
    #: the sections ``mtl-fast bench`` runs when none is named (``None``: all of them).
    default_sections: tuple[str, ...] | None = None
    #: time limit (seconds) per section, as (section, seconds) pairs: cells not started by the
    #: limit are skipped (time a section leaves unused passes to the next one). Empty: none.
    section_time_s: tuple[tuple[str, float], ...] = ()
    #: upper bound (seconds) on one measurement's planned rounds: slow calls get fewer than
    #: ``min_repeats`` rounds (never fewer than 3). ``None``: no bound.
    cell_time_s: float | None = None

    def ops_Ds(self, T: int, device_type: str) -> tuple[int, ...]:
        """The D values of the ops grid at T on a device of this type (``"cpu"``, ``"cuda"``)."""
        extra = self.gpu_extra_D if device_type == "cuda" else ()
        if self.gpu_extra_D_max_T is not None and T > self.gpu_extra_D_max_T:
            extra = ()
        return self.ops_D + extra


TIERS: dict[str, Tier] = {
    "smoke": Tier(
        name="smoke",
        ops_T=(2, 8),
        ops_D=(4096,),
        ops_dtypes=("fp32", "bf16"),
        precision_T=(2, 8),
        precision_D=2048,
        precision_seeds=1,
        train_T=(3,),
        train_width=4,
        train_image=16,
        train_batch=4,
        stats_T=(3, 40),
        stats_steps=5,
        scaling_T=(2, 16),
        scaling_D=2048,
        scaling_train_T=(3,),
        train_warmup=1,
        train_min_repeats=1,
        warmup=0,
        min_repeats=1,
        max_repeats=2,
        budget_s=0.01,
        copy_bytes=4 * 1024**2,
    ),
    "quick": Tier(
        name="quick",
        ops_T=(2, 8, 64),
        ops_D=(100_000, 1_000_000),
        ops_dtypes=("fp32",),
        precision_T=(2, 8, 64),
        train_T=(10,),
        train_warmup=1,
        train_min_repeats=5,
        stats_T=(3, 40, 1000),
        stats_steps=20,
        scaling_T=(2, 8, 32, 128, 512, 1024),
        scaling_D=10_000,
        scaling_train_T=(),
        warmup=1,
        min_repeats=3,
        max_repeats=10,
        budget_s=0.25,
        copy_bytes=256 * 1024**2,
    ),
    "full": Tier(
        name="full",
        ops_T=(2, 3, 8, 16, 40, 64, 128, 256),
        ops_D=(100_000, 1_000_000, 4_000_000),
        ops_dtypes=("fp32", "bf16"),
        gpu_extra_D=(16_000_000,),
        precision_T=(2, 3, 8, 16, 40, 64, 128, 256),
        precision_D=100_000,
        precision_seeds=5,
        train_T=(3, 10, 40),
        train_warmup=2,
        train_min_repeats=10,
        stats_T=(3, 40, 1000),
        stats_steps=100,
        scaling_T=(2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        scaling_D=1_000_000,
        scaling_train_T=(3, 10, 20, 40, 80, 128),
        warmup=2,
        min_repeats=5,
        max_repeats=30,
        budget_s=1.0,
        copy_bytes=1024**3,
    ),
    "gpu": Tier(
        name="gpu",
        ops_T=(2, 3, 8, 16, 40, 64, 128, 256),
        ops_D=(1_000_000, 16_000_000),
        ops_dtypes=("fp32", "bf16"),
        gpu_extra_D=(64_000_000,),
        gpu_extra_D_max_T=16,
        precision=False,
        train_T=(3, 10, 40, 128),
        train_width=32,
        train_image=128,
        train_batch=64,
        train_warmup=3,
        train_min_repeats=10,
        scaling_T=(2, 8, 32, 128, 512, 1024, 2048, 4096),
        scaling_D=1_000_000,
        scaling_train_T=(3, 10, 40, 128),
        warmup=3,
        min_repeats=10,
        max_repeats=50,
        budget_s=0.2,
        copy_bytes=2 * GiB,
        memory_cap_bytes=100 * GiB,
        default_sections=("ops", "train", "scaling"),
        section_time_s=(("ops", 85.0), ("train", 30.0), ("scaling", 25.0)),
        cell_time_s=5.0,
    ),
}

#: Default memory budget (24 GiB: the CPU machines' memory), lowered to what the machine has.
MEMORY_BUDGET = 24 * GiB


def get_tier(name: str | None = None) -> Tier:
    """The tier ``name``, else the one named by ``$MTL_FAST_BENCH_TIER``, else ``smoke``."""
    import os

    name = name or os.environ.get(TIER_ENV) or "smoke"
    if name not in TIERS:
        raise ValueError(f"unknown benchmark tier {name!r}; expected one of {sorted(TIERS)}")
    return TIERS[name]


def memory_budget(device: torch.device | str, cap: int | None = None) -> int:
    """Bytes a workload may occupy: ``cap`` (default 24 GiB; a tier's ``memory_cap_bytes``), or
    85% of what the device (CUDA) or the machine (CPU) has free if less."""
    device = torch.device(device)
    cap = MEMORY_BUDGET if cap is None else cap
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(min(cap, 0.85 * free))
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        available = int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError):
        return cap
    return int(min(cap, 0.85 * available))


DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16}


def element_size(dtype: str) -> int:
    """Bytes per element of a dtype name (``"fp32"``, ``"bf16"``)."""
    return torch.empty((), dtype=DTYPES[dtype]).element_size()


# --------------------------------------------------------------------------- inputs


def make_jacobian(
    T: int,
    D: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    seed: int = 0,
    spread: float = 3.0,
    shared: float = 0.5,
) -> Tensor:
    """A stacked task-gradient matrix J [T, D] with realistic geometry.

    Row t is n_t (√shared · s + √(1−shared) · e_t) with s a common unit direction, e_t an
    independent one (pairwise cosines ≈ ``shared``) and norms n_t = e^{u_t}, u_t evenly spread
    over [−spread, spread] in a shuffled order. Generated row by row in float32 (no float64
    T×D temporary), then stored in ``dtype``.

    On the CPU (and any device but CUDA) the rows come from a CPU generator (the values are
    fixed for a seed: committed results and tests depend on them). On CUDA they are drawn on
    the device by a CUDA generator (:func:`_jacobian_on_device`): same geometry, other values.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _jacobian_on_device(T, D, dtype, device, seed=seed, spread=spread, shared=shared)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    J = torch.empty((T, D), dtype=dtype, device=device)
    common = torch.randn(D, generator=gen)
    common /= common.norm()
    logn = torch.linspace(-spread, spread, T) if T > 1 else torch.zeros(1)
    logn = logn[torch.randperm(T, generator=gen)]
    a, b = math.sqrt(shared), math.sqrt(1 - shared)
    for t in range(T):
        e = torch.randn(D, generator=gen)
        e /= e.norm()
        J[t].copy_(math.exp(float(logn[t])) * (a * common + b * e))
    return J


def _jacobian_on_device(
    T: int,
    D: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    seed: int,
    spread: float,
    shared: float,
) -> Tensor:
    """:func:`make_jacobian`'s matrix drawn on ``device`` by a generator of that device: the
    norms' order from a CPU generator (T numbers), every D-sized draw on the device, one row at
    a time in float32 (no host sync, no T×D work on the host)."""
    order = torch.randperm(T, generator=torch.Generator(device="cpu").manual_seed(seed))
    logn = torch.linspace(-spread, spread, T) if T > 1 else torch.zeros(1)
    scales = [math.exp(float(v)) for v in logn[order]]
    gen = torch.Generator(device=device).manual_seed(seed)
    J = torch.empty((T, D), dtype=dtype, device=device)
    common = torch.randn(D, generator=gen, device=device)
    common /= common.norm()
    common *= math.sqrt(shared)
    b = math.sqrt(1 - shared)
    for t in range(T):
        e = torch.randn(D, generator=gen, device=device)
        e *= b / e.norm()
        e += common
        e *= scales[t]
        J[t].copy_(e)
    return J


# --------------------------------------------------------------------------- torchjd


@functools.cache
def torchjd_version() -> str | None:
    """torchjd's version when it imports (the optional ``bench`` extra), else ``None``."""
    try:
        import importlib.metadata as md

        import torchjd.aggregation  # noqa: F401

        return md.version("torchjd")
    except Exception:
        return None


def torchjd_available() -> bool:
    """True when torchjd's aggregators can be benchmarked."""
    return torchjd_version() is not None


# --------------------------------------------------------------------------- ops


#: The measured operations. ``step_*``: the full step G → α → Σ α_t g_t from J.
OPS = ("gram", "imtlg_weights", "mgda_weights", "combine", "step_imtlg", "step_mgda")
#: Ops whose cost depends on D (timed on the (T, D) grid; the solves only on T).
D_OPS = ("gram", "combine", "step_imtlg", "step_mgda")
SOLVE_OPS = ("imtlg_weights", "mgda_weights")
#: Implementations side by side; mtl_fast first (the ratios are "alternative / mtl_fast").
IMPLS = ("mtl_fast", "reference", "libmtl_style", "torchjd")
IMPL_LABELS = {
    "mtl_fast": "mtl_fast (auto)",
    "reference": "mtl_fast.reference (backend='torch')",
    "libmtl_style": "LibMTL-style (Liu et al. 2021 Alg. 1 / Frank-Wolfe)",
    "torchjd": "torchjd",
}


class Unsupported(Exception):
    """This (op, implementation, input) combination cannot be measured; the message says why."""


class NotApplicable(Unsupported):
    """The combination has no meaning (e.g. a Gram-matrix solve for an algorithm working on J):
    left out of the tables without being listed as skipped."""


@dataclass
class OpInputs:
    """The inputs of one (T, D, dtype) configuration: J, its Gram matrix and IMTL-G weights."""

    J: Tensor
    G: Tensor
    alpha: Tensor

    @classmethod
    def make(
        cls, T: int, D: int, dtype: str, device: torch.device | str, seed: int = 0
    ) -> OpInputs:
        import mtl_fast as mf

        J = make_jacobian(T, D, DTYPES[dtype], device, seed=seed)
        G = mf.gram(J)
        return cls(J=J, G=G, alpha=mf.imtl_g_weights(G))


def _mtl_fast_op(op: str, inp: OpInputs, backend: str) -> Callable[[], Any]:
    import mtl_fast as mf

    J, G, alpha = inp.J, inp.G, inp.alpha
    if op == "gram":
        return lambda: mf.gram(J, backend=backend)
    if op == "imtlg_weights":
        return lambda: mf.imtl_g_weights(G, backend=backend)
    if op == "mgda_weights":
        return lambda: mf.mgda_weights(G, backend=backend)
    if op == "combine":
        return lambda: mf.combine(J, alpha, backend=backend)
    if op == "step_imtlg":
        return lambda: mf.combine(
            J, mf.imtl_g_weights(mf.gram(J, backend=backend), backend=backend), backend=backend
        )
    if op == "step_mgda":
        return lambda: mf.combine(
            J, mf.mgda_weights(mf.gram(J, backend=backend), backend=backend), backend=backend
        )
    raise ValueError(f"unknown op {op!r}")


def _libmtl_op(op: str, inp: OpInputs) -> Callable[[], Any]:
    J, G, alpha = inp.J, inp.G, inp.alpha
    if op == "gram":
        return lambda: J @ J.T
    if op == "imtlg_weights":
        raise NotApplicable("LibMTL-style IMTL-G works on J (Algorithm 1), not on a Gram matrix")
    if op == "mgda_weights":
        return lambda: libmtl_style.mgda_weights_from_gram(G)
    if op == "combine":
        return lambda: libmtl_style.combine(J, alpha)
    if op == "step_imtlg":
        return lambda: libmtl_style.imtl_g_step(J)
    if op == "step_mgda":
        return lambda: libmtl_style.mgda_step(J)
    raise ValueError(f"unknown op {op!r}")


def _torchjd_op(op: str, inp: OpInputs) -> Callable[[], Any]:
    if not torchjd_available():
        raise Unsupported("torchjd is not installed (pip install 'mtl_fast[bench]')")
    from torchjd.aggregation import IMTLG, MGDA, IMTLGWeighting, MGDAWeighting

    J, G = inp.J, inp.G
    alpha = inp.alpha.to(J.dtype)
    low = J.dtype in (torch.bfloat16, torch.float16)
    if op == "gram":
        try:
            from torchjd._linalg import compute_gramian
        except ImportError:  # a private helper: fall back to the same product
            return lambda: J @ J.T
        return lambda: compute_gramian(J)
    if op == "imtlg_weights":
        imtlg_weighting = IMTLGWeighting()
        return lambda: imtlg_weighting(G)
    if op == "mgda_weights":
        mgda_weighting = MGDAWeighting()
        return lambda: mgda_weighting(G)
    if op == "combine":
        return lambda: alpha @ J
    if op == "step_imtlg":
        if low:
            raise Unsupported(f"torchjd IMTLG raises on {J.dtype} (torch.linalg.pinv)")
        imtlg = IMTLG()
        return lambda: imtlg(J)
    if op == "step_mgda":
        mgda = MGDA()
        return lambda: mgda(J)
    raise ValueError(f"unknown op {op!r}")


def build_op(op: str, impl: str, inp: OpInputs) -> Callable[[], Any]:
    """A zero-argument callable performing ``op`` with ``impl`` on ``inp``.

    Raises:
        Unsupported: the combination has no meaning or cannot run here (the reason).
    """
    if impl == "mtl_fast":
        return _mtl_fast_op(op, inp, "auto")
    if impl == "reference":
        return _mtl_fast_op(op, inp, "torch")
    if impl == "libmtl_style":
        return _libmtl_op(op, inp)
    if impl == "torchjd":
        return _torchjd_op(op, inp)
    raise ValueError(f"unknown implementation {impl!r}; expected one of {IMPLS}")


def floor_bytes(op: str, T: int, D: int, esize: int) -> int | None:
    """Bytes an ideal implementation must move: gram reads J once; combine reads J and writes
    g; the full step reads J twice and writes g. ``None`` for the T×T solves."""
    if op == "gram":
        return T * D * esize
    if op == "combine":
        return (T + 1) * D * esize
    if op.startswith("step_"):
        return (2 * T + 1) * D * esize
    return None


def estimated_extra_bytes(op: str, impl: str, T: int, D: int, esize: int) -> int:
    """A generous estimate of an implementation's temporaries (to skip what cannot fit)."""
    td = T * D * esize
    if impl == "libmtl_style" and op == "step_imtlg":
        return 5 * td + 8 * D
    if impl == "libmtl_style" and op in ("combine", "step_mgda"):
        return td + 8 * D
    return td // 8 + 16 * D + 64 * T * T


# --------------------------------------------------------------------------- MGDA oracle


def mgda_objective(G64: Tensor, alpha: Tensor) -> float:
    """αᵀGα in float64."""
    a = alpha.detach().to(torch.float64).cpu()
    return float(a @ G64 @ a)


def mgda_oracle(G: Tensor) -> Tensor | None:
    """The exact simplex-constrained minimiser of αᵀGα by quadprog (float64, tiny ridge), or
    ``None`` when quadprog is not installed. Independent of mtl_fast's solver."""
    try:
        import numpy as np
        import quadprog
    except ImportError:
        return None
    G64 = G.detach().to(torch.float64).cpu()
    T = G64.shape[0]
    scale = float(G64.diagonal().max())
    if not scale > 0:
        return None
    P = (G64 / scale).numpy() + 1e-12 * np.eye(T)
    C = np.concatenate([np.ones((T, 1)), np.eye(T)], axis=1)
    b = np.concatenate([[1.0], np.zeros(T)])
    x = quadprog.solve_qp(P, np.zeros(T), C, b, meq=1)[0]
    return torch.from_numpy(np.clip(x, 0, None))


# --------------------------------------------------------------------------- IMTL-G precision


def imtlg_errors(T: int, D: int, seed: int) -> dict[str, float]:
    """Relative errors ‖α − α*‖/‖α*‖ of the float32 IMTL-G weights against a float64 oracle.

    J (float32) has rows of norms spread over e^±3 plus a shared component
    (:func:`make_jacobian`); the oracle is Algorithm 1's closed form evaluated in float64 on
    the same J (exactly representable in float64), so the errors are those of the arithmetic,
    not of rounding the input. Compared:
    mtl_fast (fp32 J, default path), the LibMTL-style fp32 formula, and torchjd (fp32) when
    installed.
    """
    import mtl_fast as mf

    J = make_jacobian(T, D, torch.float32, seed=seed)
    oracle = libmtl_style.imtl_g_weights(J.to(torch.float64))

    def err(alpha: Tensor) -> float:
        a = alpha.detach().to(torch.float64).cpu()
        return float((a - oracle).norm() / oracle.norm())

    out = {
        "mtl_fast": err(mf.imtl_g_weights(mf.gram(J))),
        "libmtl_style": err(libmtl_style.imtl_g_weights(J)),
    }
    if torchjd_available():
        from torchjd.aggregation import IMTLGWeighting

        out["torchjd"] = err(IMTLGWeighting()(J @ J.T))
    return out


# --------------------------------------------------------------------------- training model


class ConvEncoder(nn.Module):
    """The shared encoder: six 3×3 conv–BN–ReLU blocks, channels w·(1, 2, 4, 8, 16, 16),
    strides (2, 2, 2, 1, 2, 1). With w = 32 and 64×64 inputs: 3.9 M parameters and a
    [B, 512, 4, 4] feature map."""

    def __init__(self, width: int = 32, in_channels: int = 3) -> None:
        super().__init__()
        chans = [in_channels] + [width * m for m in (1, 2, 4, 8, 16, 16)]
        strides = (2, 2, 2, 1, 2, 1)
        layers: list[nn.Module] = []
        for cin, cout, s in zip(chans[:-1], chans[1:], strides):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=s, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.body = nn.Sequential(*layers)
        self.out_channels = chans[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class TaskHead(nn.Module):
    """A light task head: 1×1 conv to 32 channels, ReLU, global average pool, linear."""

    def __init__(self, in_channels: int, out_features: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 32, 1)
        self.fc = nn.Linear(32, out_features)

    def forward(self, z: Tensor) -> Tensor:
        return self.fc(torch.relu(self.conv(z)).mean(dim=(2, 3)))


#: Classes of the classification tasks.
NUM_CLASSES = 10


def scaled_task_loss(t: int, out: Tensor, targets: list[Tensor], scales: list[float]) -> Tensor:
    """Task t's loss in the training-step benchmarks: the MSE of ``out[:, 0]`` for even t, the
    cross-entropy of ``out`` for odd t, times ``scales[t]``."""
    if t % 2 == 0:
        loss = nn.functional.mse_loss(out[:, 0], targets[t])
    else:
        loss = nn.functional.cross_entropy(out, targets[t])
    return scales[t] * loss


@dataclass
class TrainSetup:
    """Model, synthetic batch and task losses of the training-step benchmark.

    Even tasks are regressions (MSE), odd tasks 10-way classifications (cross-entropy); task t's
    loss is multiplied by 10^{u_t}, u_t evenly spread over [−3, 3], so raw losses differ by six
    orders of magnitude.
    """

    T: int
    encoder: ConvEncoder
    heads: nn.ModuleList
    x: Tensor
    targets: list[Tensor]
    scales: list[float]
    device: torch.device
    extras: dict[str, Any] = field(default_factory=dict)

    def task_loss(self, t: int, out: Tensor) -> Tensor:
        """The scaled loss of task t for the head output ``out``."""
        return scaled_task_loss(t, out, self.targets, self.scales)

    def parameters(self) -> list[nn.Parameter]:
        """Encoder and head parameters."""
        return list(self.encoder.parameters()) + list(self.heads.parameters())

    def feature_numel(self) -> int:
        """D of the split: elements of the shared feature map (the encoder downsamples 16×)."""
        side = self.x.shape[-1] // 16
        return self.x.shape[0] * self.encoder.out_channels * side * side

    def num_parameters(self) -> dict[str, int]:
        """Parameter counts of the encoder and of all heads."""
        return {
            "encoder": sum(p.numel() for p in self.encoder.parameters()),
            "heads": sum(p.numel() for p in self.heads.parameters()),
        }


def make_train_setup(
    T: int, tier: Tier, device: torch.device | str = "cpu", *, seed: int = 0
) -> TrainSetup:
    """A fresh model (same initial weights for a given seed) and a synthetic batch."""
    device = torch.device(device)
    torch.manual_seed(seed)
    encoder = ConvEncoder(tier.train_width).to(device)
    heads = nn.ModuleList(
        TaskHead(encoder.out_channels, 1 if t % 2 == 0 else NUM_CLASSES) for t in range(T)
    ).to(device)
    gen = torch.Generator(device="cpu").manual_seed(seed + 1)
    B, S = tier.train_batch, tier.train_image
    x = torch.randn(B, 3, S, S, generator=gen).to(device)
    targets = [
        torch.randn(B, generator=gen).to(device)
        if t % 2 == 0
        else torch.randint(0, NUM_CLASSES, (B,), generator=gen).to(device)
        for t in range(T)
    ]
    u = torch.linspace(-3, 3, T).tolist() if T > 1 else [0.0]
    scales = [10.0**v for v in u]
    return TrainSetup(T, encoder, heads, x, targets, scales, device)


# --------------------------------------------------------------------------- method registry

#: The methods of the training-step benchmark, in table order (EqualWeighting: the baseline).
METHOD_NAMES = (
    "EqualWeighting",
    "UncertaintyWeighting",
    "CVWeighting",
    "LSB",
    "AMTL",
    "IMTLL",
    "IMTLG",
    "IMTL",
    "MGDA",
    "GradNorm",
    "PCGrad",
    "CAGrad",
    # The rest of the field (Gram-space implementations of widely used methods).
    "NashMTL",
    "UPGrad",
    "DualProj",
    "AlignedMTL",
    "GradVac",
    "DBMTL",
    "FAMO",
    "STCH",
    # Added with the methods the field added since: Gram-space (FairGrad, ConFIG, SDMGrad),
    # on the gradient rows (ExcessMTL, MoCo, GradDrop) and a composition (IMTL-L ∘ IMTL-G).
    "FairGrad",
    "ConFIG",
    "SDMGrad",
    "ExcessMTL",
    "MoCo",
    "GradDrop",
    "Compose",
)
#: LibMTL-style training steps measured next to the methods.
LIBMTL_METHODS = {"LibMTL-style IMTL": "imtl", "LibMTL-style MGDA": "mgda"}
#: Methods of the training-step scaling plot.
SCALING_METHODS = ("EqualWeighting", "IMTLG", "MGDA", "LibMTL-style IMTL", "LibMTL-style MGDA")
#: Learning rate of the benchmark's SGD (tiny: the timing must not depend on training drift).
TRAIN_LR = 1e-6


def find_method_class(name: str) -> type | None:
    """The registered Weighting subclass ``name`` (:mod:`mtl_fast.methods.registry`), ``None``
    when no method has that name."""
    from mtl_fast.methods import registry

    try:
        return registry.get(name).cls
    except KeyError:
        return None


def _bench_options(name: str, T: int) -> dict[str, Any]:
    """The benchmark's arguments on top of the registry's defaults: the task types of its tasks
    (even: regression, odd: classification) for uncertainty weighting, and FAMO timed without
    its optional extra forward pass (its per-step cost proper)."""
    if name == "UncertaintyWeighting":
        return {"task_types": ["regression" if t % 2 == 0 else "classification" for t in range(T)]}
    if name == "FAMO":
        return {"extra_pass": False}
    return {}


def build_method(name: str, T: int) -> Weighting:
    """Method ``name`` for T tasks: the registry's constructor with the benchmark's options.

    Raises:
        LookupError: no such method.
    """
    from mtl_fast.methods import registry

    try:
        spec = registry.get(name)
    except KeyError as exc:
        raise LookupError(str(exc)) from None
    return spec.build(T, **_bench_options(name, T))


def method_family(method: nn.Module) -> str:
    """``"gradient"`` for methods acting on the shared gradient, else ``"loss"``."""
    return "gradient" if getattr(method, "gradient_based", False) else "loss"


def _synthetic_losses(setup: TrainSetup, gen: torch.Generator) -> Tensor:
    scale = torch.tensor(setup.scales)
    return (scale * (0.5 + torch.rand(setup.T, generator=gen))).to(setup.device)


def _prepare(method: Weighting, setup: TrainSetup) -> None:
    """Bring a method to its steady state before it is timed (outside the timed steps), by the
    lifecycle calls its class declares (:attr:`mtl_fast.Weighting.lifecycle`):

    * ``observe`` (AMTL, DTP): one evaluation's accuracies, so the weights are the
      achievement-based ones (a training loop calls it after each evaluation, not per step);
    * ``end_epoch`` (LSB, DWA, STCH): three epochs of synthetic losses, then more until STCH is
      past its warm-up and reference epochs, so the timed steps run the full formulas (LSB's
      eq. 10 from period 3 on, the Tchebycheff scalarisation) rather than warm-up weights.
    """
    T = setup.T
    if "observe" in method.lifecycle:
        method.observe([0.4 + 0.5 * t / max(T - 1, 1) for t in range(T)])
    if "end_epoch" in method.lifecycle:
        gen = torch.Generator(device="cpu").manual_seed(7)
        epochs = 0
        while (
            epochs < 3
            or getattr(method, "warming_up", False)
            or getattr(method, "reference", 1) is None
        ):
            for _ in range(4):
                method.loss(_synthetic_losses(setup, gen))
            method.end_epoch()
            epochs += 1


@dataclass
class TrainStep:
    """A training step ready to time: ``step()`` runs one full step."""

    name: str
    family: str
    step: Callable[[], Any]
    setup: TrainSetup


def make_method_step(name: str, T: int, tier: Tier, device: torch.device | str) -> TrainStep:
    """The training step of method ``name`` on a fresh copy of the benchmark model.

    The loop is the one of docs/design.md: features → ``split`` → T losses → ``method.loss`` → one
    backward → SGD step (the method's own parameters included).

    Raises:
        LookupError, TypeError: from :func:`build_method` (the method cannot be built).
    """
    setup = make_train_setup(T, tier, device)
    if name in LIBMTL_METHODS:
        kind = LIBMTL_METHODS[name]
        log_scales = None
        params: list[Tensor] = [*setup.parameters()]
        if kind == "imtl":
            log_scales = torch.zeros(T, device=setup.device, requires_grad=True)
            params.append(log_scales)
        opt = torch.optim.SGD(params, lr=TRAIN_LR)

        def libmtl_step() -> Any:
            return libmtl_style.train_step(
                setup.encoder, setup.heads, setup.task_loss, opt, setup.x, kind, log_scales
            )

        return TrainStep(name, "gradient", libmtl_step, setup)

    method = build_method(name, T).to(setup.device)
    _prepare(method, setup)
    opt = torch.optim.SGD(setup.parameters() + list(method.parameters()), lr=TRAIN_LR)
    step = method_train_step(method, T, setup.encoder, setup.heads, setup.task_loss, setup.x, opt)
    return TrainStep(name, method_family(method), step, setup)


def method_train_step(
    method: Weighting,
    T: int,
    encoder: nn.Module,
    heads: nn.ModuleList,
    task_loss: Callable[[int, Tensor], Tensor],
    x: Tensor,
    opt: torch.optim.Optimizer,
) -> Callable[[], Tensor]:
    """The eager training step the benchmarks time: ``z = encoder(x)``, ``method.split`` of z
    into T views, ``task_loss(t, heads[t](z_t))`` stacked, ``method.loss``, backward and an
    optimizer step; the step returns the total."""

    def step() -> Tensor:
        opt.zero_grad(set_to_none=True)
        z = encoder(x)
        zs = method.split(z, num_tasks=T)
        losses = torch.stack([task_loss(t, heads[t](zs[t])) for t in range(T)])
        total = method.loss(losses)
        total.backward()
        opt.step()
        return total

    return step


# --------------------------------------------------------------------------- torch.compile

#: Methods of the compile section: the baseline, a gradient method (split's backward with the
#: native Gram, solve and combine) and a loss-based one (the C++ Welford accumulator).
COMPILE_METHODS = ("EqualWeighting", "IMTLG", "CVWeighting")
#: ``"eager"``; ``"model"``: the forward (encoder, split, heads, losses) compiled with
#: ``fullgraph=True``, loss / backward / optimizer eager; ``"step"``: the whole step compiled.
COMPILE_MODES = ("eager", "model", "step")
#: The torch.compile backend of the compile section.
COMPILE_BACKEND = "inductor"


def make_compiled_step(
    name: str,
    T: int,
    tier: Tier,
    device: torch.device | str,
    mode: str,
    backend: str | None = None,
) -> TrainStep:
    """The training step of :func:`make_method_step` (same model, batch and method) in one of
    :data:`COMPILE_MODES`. The first call, which compiles, runs here: its seconds are in
    ``extras["first_call_s"]`` and the timed calls see the compiled code only."""
    import time

    if mode not in COMPILE_MODES:
        raise ValueError(f"mode must be one of {COMPILE_MODES}; got {mode!r}")
    backend = backend or COMPILE_BACKEND
    setup = make_train_setup(T, tier, device)
    method = build_method(name, T).to(setup.device)
    _prepare(method, setup)
    opt = torch.optim.SGD(setup.parameters() + list(method.parameters()), lr=TRAIN_LR)
    encoder, heads = setup.encoder, setup.heads

    def forward(x: Tensor) -> Tensor:
        zs = method.split(encoder(x), num_tasks=T)
        return torch.stack([setup.task_loss(t, heads[t](zs[t])) for t in range(T)])

    if mode == "model":
        forward = torch.compile(forward, fullgraph=True, backend=backend)

    def step() -> Any:
        opt.zero_grad(set_to_none=True)
        total = method.loss(forward(setup.x))
        total.backward()
        opt.step()
        return total.detach()

    if mode == "step":
        step = torch.compile(step, backend=backend)
    t0 = time.perf_counter()
    step()
    setup.extras["first_call_s"] = time.perf_counter() - t0
    return TrainStep(f"{name} {mode}", method_family(method), step, setup)


# --------------------------------------------------------------------------- loss statistics


class PurePyTorchCV:
    """CV-Weighting (Groenendijk et al. 2021) the way published code writes it: running tensors
    updated with
    torch ops each step (mean factor 1 − 1/(t+1), Welford's M₂, σ = sqrt(M₂/(t+1) + 1e-8)),
    loss ratio L/μ_L, weights σ_l/μ_l normalised to sum 1, equal weights for two steps."""

    def __init__(self, num_tasks: int, device: torch.device | str = "cpu") -> None:
        self.t = 0
        z = torch.zeros(num_tasks, dtype=torch.float64, device=device)
        self.mean_L = z.clone()
        self.mean_l = z.clone()
        self.m2_l = z.clone()
        self.std_l = z.clone()
        self.num_tasks = num_tasks

    def loss(self, losses: Tensor) -> Tensor:
        """Σ α_t L_t for this step, updating the statistics."""
        L = losses.detach().to(torch.float64)
        ratio = torch.ones_like(L) if self.t == 0 else L / self.mean_L
        if self.t <= 1:
            alpha = torch.full_like(L, 1.0 / self.num_tasks)
        else:
            alpha = self.std_l / self.mean_l
            alpha = alpha / alpha.sum()
        keep = 0.0 if self.t == 0 else 1.0 - 1.0 / (self.t + 1)
        new_mean_l = keep * self.mean_l + (1 - keep) * ratio
        self.m2_l = self.m2_l + (ratio - self.mean_l) * (ratio - new_mean_l)
        self.mean_l = new_mean_l
        self.std_l = torch.sqrt(self.m2_l / (self.t + 1) + 1e-8)
        self.mean_L = keep * self.mean_L + (1 - keep) * L
        self.t += 1
        return (alpha.to(losses.dtype) * losses).sum()


#: Implementations of the CV-Weighting step.
STATS_IMPLS = ("mtl_fast C++ accumulator", "mtl_fast torch accumulator", "pure PyTorch")


def make_stats_step(impl: str, T: int, device: torch.device | str = "cpu") -> Callable[[], Any]:
    """One CV-Weighting step (weights from the statistics, statistics updated, weighted total)
    on fresh synthetic losses of very different scales; a zero-argument callable.

    Raises:
        Unsupported: ``CVWeighting`` (or its ``accumulator=`` option) is not in this build.
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = 10.0 ** torch.linspace(-3, 3, T)
    pool = [(base * (1 + 0.3 * torch.rand(T, generator=gen))).to(device) for _ in range(64)]
    counter = iter(range(1 << 62))

    if impl == "pure PyTorch":
        cv: Any = PurePyTorchCV(T, device)
    else:
        cls = find_method_class("CVWeighting")
        if cls is None:
            raise Unsupported("CVWeighting is not defined in mtl_fast (yet)")
        accumulator = "auto" if impl == "mtl_fast C++ accumulator" else "torch"
        if "accumulator" not in inspect.signature(cls).parameters:
            raise Unsupported("CVWeighting has no accumulator= option in this build")
        cv = cls(T, accumulator=accumulator)

    def step() -> Any:
        return cv.loss(pool[next(counter) % len(pool)])

    return step
