"""The comparison problems: data, model, task losses, test metrics and baselines.

Four problems, each small enough to train on a CPU in seconds:

* :class:`DigitsProblem` (``digits``): scikit-learn's bundled 8×8 digits (real data, no
  download), five tasks with deliberately different losses and loss scales: digit class
  (cross-entropy), parity and digit ≥ 5 (binary cross-entropy), image reconstruction (L1 in pixel
  units 0..16) and ink amount (squared error in "fully inked pixels").
* :class:`DenoiseProblem` (``denoise``): one task with several losses, in the spirit of
  Groenendijk et al. 2021 (CV-Weighting): denoising the digits with an L1 loss, an SSIM-style
  loss and a gradient-smoothness (total variation) loss. The smoothness loss is auxiliary:
  alone it is minimised by a flat image, so it must not dominate.
* :class:`SyntheticProblem` (``synthetic``): the regression benchmark of GradNorm (Chen et al.
  2018, §5.1): T tasks f_t(x) = σ_t tanh((B + ε_t) x) whose scales σ_t span two orders of
  magnitude (losses span four).
* :class:`ScaleProblem` (``scale``): Liu et al. 2021's scale-invariance test (Table 1):
  ``digits`` with one task's loss (the classification cross-entropy) multiplied by 10.

Every problem builds a :class:`MultiTaskNet` (a shared encoder and per-task heads; gradient-based
methods receive the encoder output through ``method.split``), computes T scalar task losses,
evaluates a metric tree ``{task: {metric: value}}`` with ``higher_is_better`` flags in the same
structure (the input of :func:`mtl_fast.metrics.delta_mtl`), and an accuracy-like KPI in [0, 1]
per loss (what AMTL and DTP receive through ``update_accuracy``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "PROBLEMS",
    "DenoiseProblem",
    "DigitsProblem",
    "Evaluation",
    "MultiTaskNet",
    "Problem",
    "ProblemData",
    "ScaleProblem",
    "Split",
    "SyntheticProblem",
    "get_problem",
]

MetricTree = dict[str, dict[str, float]]
SignTree = dict[str, dict[str, bool]]


# --------------------------------------------------------------------------- data containers
@dataclass
class Split:
    """One data split: the model inputs and named target tensors (first dimension = samples)."""

    inputs: Tensor
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, index: Tensor | slice) -> Split:
        """The samples at ``index`` (a slice or an index tensor)."""
        return Split(self.inputs[index], {k: v[index] for k, v in self.targets.items()})


@dataclass
class ProblemData:
    """Train / validation / test splits. Validation feeds the accuracy hooks (AMTL, DTP) and the
    AMTL potentials; the test split is only used for the final metrics."""

    train: Split
    val: Split
    test: Split


@dataclass
class Evaluation:
    """Metrics of one model on one split.

    Attributes:
        metrics: ``{task: {metric: value}}`` (only the tasks the model was trained for).
        kpi: one accuracy-like value in [0, 1] per trained loss (see each problem's docstring).
        per_sample: optional ``{metric: array [n_samples]}`` for win rates.
    """

    metrics: MetricTree
    kpi: list[float]
    per_sample: dict[str, np.ndarray] | None = None


class MultiTaskNet(nn.Module):
    """A shared encoder and one head per task.

    ``forward(x, method)`` computes z = encoder(x), hands it to ``method.split`` (a no-op for
    loss-based methods, the gradient-balancing autograd Function for gradient-based ones) and
    applies head t to view t. Without a method (evaluation) every head reads z directly.
    """

    def __init__(self, encoder: nn.Module, heads: Sequence[nn.Module]) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)

    @property
    def num_tasks(self) -> int:
        """The number of heads."""
        return len(self.heads)

    def forward(self, x: Tensor, method: nn.Module | None = None) -> list[Tensor]:
        z = self.encoder(x)
        if method is None:
            views: Sequence[Tensor] = [z] * self.num_tasks
        else:
            views = method.split(z, num_tasks=self.num_tasks)
        return [head(v) for head, v in zip(self.heads, views)]


def _mlp(sizes: Sequence[int], *, last_activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _clipped_r2(pred: Tensor, target: Tensor) -> float:
    """max(0, 1 − SSE/SST): the regression KPI in [0, 1] handed to AMTL and DTP."""
    sse = float(((pred - target) ** 2).sum())
    sst = float(((target - target.mean(dim=0, keepdim=True)) ** 2).sum())
    if sst <= 0.0:
        return 0.0
    return max(0.0, 1.0 - sse / sst)


def _noisy_digits(tiny: bool, sigma: float, seed: int):
    """The digits (300 with ``tiny``): pixels (0..16), labels, clean images on [0, 1], a fixed
    Gaussian-noise copy (σ, seeded, clamped to [0, 1]) and the stratified train / validation /
    test indices."""
    pixels, digit = _load_digits()
    if tiny:
        pixels, digit = pixels[:300], digit[:300]
    splits = _split_indices(len(digit), (0.15, 0.25), 0, digit)
    clean = torch.from_numpy(pixels / 16.0)
    gen = torch.Generator().manual_seed(seed)
    noisy = (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0.0, 1.0)
    return pixels, digit, clean, noisy, splits


def _split_indices(
    n: int, fractions: tuple[float, float], seed: int, stratify: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test indices (``fractions`` = (val, test) of the whole)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n)
    val_frac, test_frac = fractions
    rest, test = train_test_split(idx, test_size=test_frac, random_state=seed, stratify=stratify)
    strat_rest = None if stratify is None else stratify[rest]
    train, val = train_test_split(
        rest, test_size=val_frac / (1.0 - test_frac), random_state=seed, stratify=strat_rest
    )
    return np.sort(train), np.sort(val), np.sort(test)


# --------------------------------------------------------------------------- base class
class Problem:
    """A comparison problem. Subclasses define the data, the model and the metrics.

    Args:
        tiny: a much smaller data set and model, for tests (seconds in total).
        loss_multipliers: optional factor per task loss applied before the weighting method sees
            the losses (the ``scale`` problem multiplies one by 10).

    Class attributes give the default budget: ``epochs`` (full run), ``quick_epochs``
    (``--quick``), ``batch_size`` and ``lr`` (Adam).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    epochs: ClassVar[int] = 30
    quick_epochs: ClassVar[int] = 4
    batch_size: ClassVar[int] = 64
    lr: ClassVar[float] = 1e-3
    #: report each single-task run on its own row (else one merged baseline row)
    show_single_runs: ClassVar[bool] = False

    #: the T loss names
    task_names: list[str]
    #: ``{task: {metric: higher_is_better}}``
    higher_is_better: SignTree
    #: "classification" or "regression" per loss (UncertaintyWeighting's likelihood)
    task_types: list[str]

    def __init__(self, *, tiny: bool = False, loss_multipliers: Sequence[float] | None = None):
        self.tiny = tiny
        self._data: ProblemData | None = None
        self.loss_multipliers: list[float] | None = (
            None if loss_multipliers is None else [float(m) for m in loss_multipliers]
        )

    # -- what subclasses implement -------------------------------------------------------
    def description(self) -> str:
        """A Markdown paragraph describing the problem, the metrics and the baseline."""
        raise NotImplementedError

    def _load(self) -> ProblemData:
        raise NotImplementedError

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        """A freshly initialised model with heads for the given task indices (uses the global
        torch RNG: seed it first)."""
        raise NotImplementedError

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        """The scalar losses of ``tasks`` (one per head of the model)."""
        raise NotImplementedError

    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        """Metrics, KPIs (and per-sample metrics where defined) of ``model`` on ``split``."""
        raise NotImplementedError

    # -- shared behaviour ----------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        """T, the number of losses the weighting methods balance."""
        return len(self.task_names)

    @property
    def key(self) -> str:
        """The name used in file names and JSON (``name``, or ``name-T`` for synthetic)."""
        return self.name

    def data(self) -> ProblemData:
        """The data splits (built once, deterministically, then cached)."""
        if self._data is None:
            self._data = self._load()
        return self._data

    def train_batch(self, split: Split, index: Tensor, generator: torch.Generator) -> Split:
        """A training mini-batch (subclasses may augment it using ``generator``)."""
        return split.take(index)

    def single_runs(self) -> list[list[int]]:
        """The task subsets trained alone for the baseline (default: each task alone)."""
        return [[t] for t in range(self.num_tasks)]

    def baseline(self, singles: Sequence[Evaluation]) -> MetricTree:
        """The Δ_MTL baseline from the single-task evaluations (default: their union)."""
        merged: MetricTree = {}
        for ev in singles:
            merged.update(ev.metrics)
        return {task: merged[task] for task in self.higher_is_better}

    def baseline_label(self) -> str:
        """How the Δ_MTL baseline is obtained (for the report)."""
        return "single-task models (one model per task, trained alone with the same budget)"

    def potentials(self, singles: Sequence[Evaluation]) -> list[float]:
        """Single-task validation KPIs, AMTL's task potentials p_t (Yun & Cho 2023 eq. 3)."""
        return [float(ev.kpi[0]) for ev in singles]

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        """Weights for ``StaticWeighting``: 1 / (initial training loss) of each task, measured
        with the freshly initialised model (normalised to sum to T)."""
        data = self.data()
        tasks = list(range(self.num_tasks))
        with torch.no_grad():
            batch = data.train
            values = [float(v) for v in self.scaled_losses(model(batch.inputs), batch, tasks)]
        inv = [1.0 / max(v, 1e-12) for v in values]
        total = sum(inv)
        return [self.num_tasks * w / total for w in inv]

    def static_weights_label(self) -> str:
        """How ``StaticWeighting``'s weights are chosen (for the report)."""
        return "w_t ∝ 1 / L_t at initialisation (loss normalisation), Σ w = T"

    def scaled_losses(
        self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]
    ) -> list[Tensor]:
        """:meth:`losses` times ``loss_multipliers`` (what the weighting method sees)."""
        values = self.losses(outputs, batch, tasks)
        if self.loss_multipliers is None:
            return values
        return [v * self.loss_multipliers[t] for v, t in zip(values, tasks)]

    def display_columns(self, metrics: MetricTree) -> dict[str, float]:
        """The per-task columns shown in the report table (default: every metric)."""
        return {f"{task} {m}": v for task, ms in metrics.items() for m, v in ms.items()}

    def display_higher_is_better(self) -> dict[str, bool]:
        """``higher_is_better`` for :meth:`display_columns`."""
        return {
            f"{task} {m}": hib
            for task, ms in self.higher_is_better.items()
            for m, hib in ms.items()
        }

    def config(self) -> dict[str, Any]:
        """Problem options recorded in the results."""
        return {"tiny": self.tiny, "loss_multipliers": self.loss_multipliers}


# --------------------------------------------------------------------------- digits
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


class DigitsProblem(Problem):
    """Five tasks on scikit-learn's 8×8 digits (1797 images, bundled with scikit-learn).

    ==============  =====================================  ==========================  =========
    task            loss                                   test metric                 KPI
    ==============  =====================================  ==========================  =========
    class           cross-entropy over 10 digits           accuracy ↑                  accuracy
    parity          binary cross-entropy (odd digit)       accuracy ↑                  accuracy
    ge5             binary cross-entropy (digit ≥ 5)       accuracy ↑                  accuracy
    recon           L1, pixel units 0..16 (64 pixels)      MAE ↓ (pixel units)         clipped R²
    ink             squared error of Σ pixels / 16         MAE ↓ ("inked pixels")      clipped R²
    ==============  =====================================  ==========================  =========

    The loss scales differ deliberately: at initialisation the ink loss is ~100× the binary
    losses. The inputs carry fixed Gaussian pixel noise (σ = 0.1 on [0, 1]; the targets are
    computed from the clean image), so that the regressions have an error floor and their
    relative errors — which Δ_MTL averages — stay meaningful. Split: 25 % test, 15 %
    validation, stratified by digit, fixed (``random_state=0``) whatever the training seed.
    Model: a 64-128-32 ReLU encoder (a deliberately narrow shared
    representation, so the tasks compete for capacity) and a 32-32-out head per task.
    """

    name = "digits"
    title = "Digits: five tasks with different losses and scales"
    epochs = 40
    quick_epochs = 6
    batch_size = 64
    lr = 2e-3
    task_names: ClassVar[list[str]] = ["class", "parity", "ge5", "recon", "ink"]
    task_types: ClassVar[list[str]] = ["classification"] * 3 + ["regression"] * 2
    higher_is_better: ClassVar[SignTree] = {
        "class": {"acc": True},
        "parity": {"acc": True},
        "ge5": {"acc": True},
        "recon": {"MAE": False},
        "ink": {"MAE": False},
    }
    #: std of the fixed Gaussian noise on the input pixels (in [0, 1])
    input_noise: ClassVar[float] = 0.1
    _out_dims: ClassVar[dict[str, int]] = {
        "class": 10,
        "parity": 1,
        "ge5": 1,
        "recon": 64,
        "ink": 1,
    }

    def description(self) -> str:
        d = self.data()
        return (
            "scikit-learn's bundled 8×8 handwritten digits (real data, no download): "
            f"{len(d.train)} training, {len(d.val)} validation and {len(d.test)} held-out test "
            f"images, inputs with fixed Gaussian pixel noise (σ = {self.input_noise} on [0, 1]). "
            "Five tasks on one shared encoder (64-128-32, ReLU): digit class "
            "(cross-entropy), parity and digit ≥ 5 (binary cross-entropy), reconstruction of "
            "the clean image (L1 in pixel units 0..16) and ink amount (squared error of Σ clean "
            "pixels / 16). At "
            "initialisation the ink loss is ~100× the binary losses. Test metrics: accuracy (↑) "
            "for the three classifications, mean absolute error (↓) for reconstruction and ink."
        )

    def _load(self) -> ProblemData:
        pixels, digit, _, x, (train, val, test) = _noisy_digits(self.tiny, self.input_noise, 4321)
        targets = {
            "class": torch.from_numpy(digit),
            "parity": torch.from_numpy((digit % 2).astype(np.float32)),
            "ge5": torch.from_numpy((digit >= 5).astype(np.float32)),
            "recon": torch.from_numpy(pixels),
            "ink": torch.from_numpy(pixels.sum(axis=1) / 16.0),
        }
        full = Split(x, targets)

        def part(idx: np.ndarray) -> Split:
            return full.take(torch.from_numpy(idx))

        return ProblemData(part(train), part(val), part(test))

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        hidden, width = (32, 16) if self.tiny else (128, 32)
        encoder = _mlp([64, hidden, width], last_activation=True)
        heads = [
            _mlp([width, width, self._out_dims[self.task_names[t]]], last_activation=False)
            for t in tasks
        ]
        return MultiTaskNet(encoder, heads)

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        y = batch.targets
        out: list[Tensor] = []
        for o, t in zip(outputs, tasks):
            name = self.task_names[t]
            if name == "class":
                out.append(F.cross_entropy(o, y["class"]))
            elif name in ("parity", "ge5"):
                out.append(F.binary_cross_entropy_with_logits(o.squeeze(1), y[name]))
            elif name == "recon":
                out.append(F.l1_loss(o, y["recon"]))
            else:
                out.append(F.mse_loss(o.squeeze(1), y["ink"]))
        return out

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        outputs = model(split.inputs)
        y = split.targets
        metrics: MetricTree = {}
        kpi: list[float] = []
        for o, t in zip(outputs, tasks):
            name = self.task_names[t]
            if name == "class":
                acc = float((o.argmax(dim=1) == y["class"]).float().mean())
                metrics[name], value = {"acc": acc}, acc
            elif name in ("parity", "ge5"):
                acc = float(((o.squeeze(1) > 0).float() == y[name]).float().mean())
                metrics[name], value = {"acc": acc}, acc
            else:
                pred = o if name == "recon" else o.squeeze(1)
                metrics[name] = {"MAE": float((pred - y[name]).abs().mean())}
                value = _clipped_r2(pred, y[name])
            kpi.append(value)
        return Evaluation(metrics, kpi)


class ScaleProblem(DigitsProblem):
    """Paper 004's scale-invariance test (Table 1): :class:`DigitsProblem` with the
    classification loss multiplied by ``factor`` (10) before the weighting method sees it.

    The report compares every metric with the unscaled ``digits`` run of the same method: a
    scale-invariant method gives the same numbers.
    """

    name = "scale"
    title = "Scale invariance: digits with the class loss ×10"

    def __init__(self, *, tiny: bool = False, factor: float = 10.0, task: int = 0) -> None:
        multipliers = [1.0] * len(DigitsProblem.task_names)
        multipliers[task] = float(factor)
        super().__init__(tiny=tiny, loss_multipliers=multipliers)
        self.factor = float(factor)
        self.scaled_task = task

    def description(self) -> str:
        return (
            f"the `digits` problem with the **{self.task_names[self.scaled_task]}** loss "
            f"multiplied by {self.factor:g} before the weighting method sees it (Liu et al. 2021, "
            "Table 1, multiplies the semantic-segmentation loss by 10). Same data, seeds, "
            "initialisation and budget as `digits`; the table gives each metric and its change "
            "from the unscaled run (a scale-invariant method shows no change). "
            "`StaticWeighting` recomputes its 1/L_t(0) weights on the scaled losses, so it is "
            "invariant by construction."
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "factor": self.factor, "scaled_task": self.scaled_task}


# --------------------------------------------------------------------------- denoise
def _ssim_per_image(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM per image over 3×3 windows (valid positions), data range 1. a, b: [N, 64]."""
    a = a.reshape(-1, 1, 8, 8)
    b = b.reshape(-1, 1, 8, 8)
    c1, c2 = 0.01**2, 0.03**2
    mu_a = F.avg_pool2d(a, 3, 1)
    mu_b = F.avg_pool2d(b, 3, 1)
    var_a = F.avg_pool2d(a * a, 3, 1) - mu_a * mu_a
    var_b = F.avg_pool2d(b * b, 3, 1) - mu_b * mu_b
    cov = F.avg_pool2d(a * b, 3, 1) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).flatten(1).mean(dim=1)


def _total_variation_per_image(a: Tensor) -> Tensor:
    """Mean absolute horizontal and vertical differences per image. a: [N, 64]."""
    img = a.reshape(-1, 8, 8)
    dx = (img[:, :, 1:] - img[:, :, :-1]).abs().flatten(1).mean(dim=1)
    dy = (img[:, 1:, :] - img[:, :-1, :]).abs().flatten(1).mean(dim=1)
    return dx + dy


class DenoiseProblem(Problem):
    """One task (denoising the 8×8 digits, Gaussian noise σ = 0.4 on [0, 1] pixels) with three
    losses, in the spirit of Groenendijk et al. 2021's depth-estimation objective (L1 + SSIM +
    disparity
    smoothness):

    ==========  ==========================================  ===================================
    loss        definition                                  KPI handed to AMTL / DTP
    ==========  ==========================================  ===================================
    L1          mean |ŷ − y|                                max(0, 1 − MAE / MAE of the input)
    SSIM        (1 − SSIM(ŷ, y)) / 2, 3×3 windows           clip(SSIM, 0, 1)
    smooth      total variation of ŷ (gradient smoothness)  max(0, 1 − |TV(ŷ) − TV(y)| / TV(y))
    ==========  ==========================================  ===================================

    The smoothness loss is auxiliary: alone it is minimised by a flat image. Test metrics (one
    task, three metrics): PSNR ↑, SSIM ↑, MAE ↓; per-image values give win rates against equal
    weighting (Groenendijk et al. 2021, Tables 2 and 4). Baseline for Δ_MTL: the model trained
    with the L1 loss
    alone (the main loss); the single-loss SSIM and smoothness models are reported too. The
    network (64-128-128-64 MLP with a sigmoid output) is the shared part; each loss reads the
    output image through ``method.split`` (identity heads), so gradient methods balance the
    three loss gradients with respect to the prediction. Training noise is drawn afresh for each
    batch from the seeded generator; validation and test noise is fixed.
    """

    name = "denoise"
    title = "Denoise: one task, three losses (L1, SSIM, smoothness)"
    epochs = 40
    quick_epochs = 6
    batch_size = 64
    lr = 2e-3
    noise = 0.4
    show_single_runs = True
    task_names: ClassVar[list[str]] = ["L1", "SSIM", "smooth"]
    task_types: ClassVar[list[str]] = ["regression"] * 3
    higher_is_better: ClassVar[SignTree] = {"denoise": {"PSNR": True, "SSIM": True, "MAE": False}}

    def description(self) -> str:
        d = self.data()
        return (
            f"denoising the 8×8 digits (Gaussian noise σ = {self.noise} on [0, 1] pixels; "
            f"{len(d.train)} / {len(d.val)} / {len(d.test)} train / validation / test images) "
            "with three losses on one output, in the spirit of Groenendijk et al. 2021's L1 + "
            "SSIM + disparity "
            "smoothness objective: L1, an SSIM loss (1 − SSIM)/2 over 3×3 windows, and a "
            "total-variation smoothness loss, which is auxiliary (alone it yields a flat image). "
            "Test metrics: PSNR (↑, dB), SSIM (↑), MAE (↓). `StaticWeighting` uses Groenendijk "
            "et al. 2021's "
            "hand-tuned weights for L1 / SSIM / smoothness (0.15, 0.85, 0.1), normalised."
        )

    def _load(self) -> ProblemData:
        _, _, clean, noisy, (train, val, test) = _noisy_digits(self.tiny, self.noise, 1234)
        # Training inputs are re-noised per batch (train_batch); keep the clean images there.
        train_t = torch.from_numpy(train)
        tr = Split(clean[train_t], {"clean": clean[train_t]})

        def part(idx: np.ndarray) -> Split:
            i = torch.from_numpy(idx)
            return Split(noisy[i], {"clean": clean[i]})

        return ProblemData(tr, part(val), part(test))

    def train_batch(self, split: Split, index: Tensor, generator: torch.Generator) -> Split:
        clean = split.targets["clean"][index]
        noisy = (clean + self.noise * torch.randn(clean.shape, generator=generator)).clamp(0, 1)
        return Split(noisy, {"clean": clean})

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        hidden = 32 if self.tiny else 128
        encoder = nn.Sequential(_mlp([64, hidden, hidden, 64], last_activation=False), nn.Sigmoid())
        return MultiTaskNet(encoder, [nn.Identity() for _ in tasks])

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        clean = batch.targets["clean"]
        out: list[Tensor] = []
        for o, t in zip(outputs, tasks):
            name = self.task_names[t]
            if name == "L1":
                out.append(F.l1_loss(o, clean))
            elif name == "SSIM":
                out.append(((1.0 - _ssim_per_image(o, clean)) / 2.0).mean())
            else:
                out.append(_total_variation_per_image(o).mean())
        return out

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        pred = model(split.inputs)[0]
        clean = split.targets["clean"]
        mse = ((pred - clean) ** 2).mean(dim=1).clamp_min(1e-10)
        psnr = 10.0 * torch.log10(1.0 / mse)
        ssim = _ssim_per_image(pred, clean)
        mae = (pred - clean).abs().mean(dim=1)
        metrics = {
            "denoise": {
                "PSNR": float(psnr.mean()),
                "SSIM": float(ssim.mean()),
                "MAE": float(mae.mean()),
            }
        }
        input_mae = float((split.inputs - clean).abs().mean())
        tv_clean = float(_total_variation_per_image(clean).mean())
        tv_pred = float(_total_variation_per_image(pred).mean())
        kpis = {
            "L1": max(0.0, 1.0 - float(mae.mean()) / input_mae),
            "SSIM": min(1.0, max(0.0, float(ssim.mean()))),
            "smooth": max(0.0, 1.0 - abs(tv_pred - tv_clean) / tv_clean),
        }
        per_sample = {"PSNR": psnr.numpy(), "SSIM": ssim.numpy(), "MAE": mae.numpy()}
        return Evaluation(metrics, [kpis[self.task_names[t]] for t in tasks], per_sample)

    def baseline(self, singles: Sequence[Evaluation]) -> MetricTree:
        return singles[0].metrics  # the L1-only model

    def baseline_label(self) -> str:
        return (
            "the model trained with the main loss (L1) alone; the other single-loss models "
            "are shown for reference"
        )

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        raw = [0.15, 0.85, 0.1]
        return [3.0 * w / sum(raw) for w in raw]

    def static_weights_label(self) -> str:
        return (
            "Groenendijk et al. 2021's hand-tuned (L1, SSIM, smoothness) = (0.15, "
            "0.85, 0.1), Σ w = T"
        )


# --------------------------------------------------------------------------- synthetic
class SyntheticProblem(Problem):
    """GradNorm's synthetic regression benchmark (Chen et al. 2018, §5.1).

    T tasks f_t(x) = σ_t tanh((B + ε_t) x), x ∈ R^250, outputs in R^100; B and ε_t are fixed
    matrices with i.i.d. N(0, 10) and N(0, 3.5) entries (read as variances), shared by the train,
    validation and test sets. The paper does not give x's distribution: here x ~ N(0, I / (250 ·
    13.5)), so the tanh argument has unit variance. The scales σ_t are log-spaced from 1 to 100
    (``np.geomspace``), so the raw squared-error losses span four orders of magnitude. Model as in
    the paper: a 4-layer, 100-unit ReLU trunk and one affine head per task. Test metric per task:
    the normalised MSE, MSE_t / σ_t² (↓); KPI: clipped R² on validation. ``StaticWeighting``
    uses the oracle weights 1/σ_t² (normalised).
    """

    name = "synthetic"
    title = "Synthetic: GradNorm's regression benchmark"
    epochs = 30
    quick_epochs = 4
    batch_size = 100
    lr = 3e-3
    in_dim = 250
    out_dim = 100

    def __init__(self, *, tiny: bool = False, num_tasks: int = 10, seed: int = 0) -> None:
        super().__init__(tiny=tiny)
        if num_tasks < 2:
            raise ValueError(f"synthetic needs at least 2 tasks; got {num_tasks}")
        self.T = int(num_tasks)
        self.seed = int(seed)
        self.sigmas = np.geomspace(1.0, 100.0, self.T)
        self.task_names = [f"t{t:02d}" if self.T < 100 else f"t{t:03d}" for t in range(self.T)]
        self.higher_is_better = {name: {"nMSE": False} for name in self.task_names}
        self.task_types = ["regression"] * self.T
        if tiny:
            self.in_dim, self.out_dim = 20, 8

    @property
    def key(self) -> str:
        return f"synthetic-T{self.T}"

    def description(self) -> str:
        d = self.data()
        return (
            f"GradNorm's regression benchmark (Chen et al. 2018, §5.1) with T = {self.T} tasks "
            f"f_t(x) = σ_t tanh((B + ε_t) x), x ∈ R^{self.in_dim}, outputs in R^{self.out_dim}, "
            "B ~ N(0, 10) and ε_t ~ N(0, 3.5) entry-wise (variances), σ_t log-spaced from 1 to "
            f"100 ({len(d.train)} / {len(d.val)} / {len(d.test)} train / validation / test "
            "samples). The paper does not give x's distribution; here the tanh argument has unit "
            "variance. Model: 4 × 100 ReLU trunk, one affine head per task. Metric: normalised "
            "test MSE_t / σ_t² (↓) per task; the table shows their mean, the worst task, and the "
            "tasks with the smallest and largest σ. `StaticWeighting` uses the oracle 1/σ_t²."
        )

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "num_tasks": self.T,
            "sigmas": [float(s) for s in self.sigmas],
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
        }

    def _load(self) -> ProblemData:
        gen = torch.Generator().manual_seed(10_000 + self.seed)
        n_train, n_val, n_test = (200, 50, 100) if self.tiny else (2000, 400, 1000)
        B = torch.randn(self.out_dim, self.in_dim, generator=gen) * math.sqrt(10.0)
        eps = torch.randn(self.T, self.out_dim, self.in_dim, generator=gen) * math.sqrt(3.5)
        sig = torch.tensor(self.sigmas, dtype=torch.float32)
        # x ~ N(0, I): the model sees unit-variance inputs; the tanh argument (B + ε_t) x is
        # divided by sqrt(in_dim · 13.5) so that it has unit variance too (no saturation).
        arg_scale = 1.0 / math.sqrt(self.in_dim * 13.5)

        def make(n: int) -> Split:
            x = torch.randn(n, self.in_dim, generator=gen)
            # y[n, t, :] = σ_t tanh(c (B + ε_t) x_n)
            arg = torch.einsum("toi,ni->nto", B + eps, x) * arg_scale
            return Split(x, {"y": torch.tanh(arg) * sig[None, :, None]})

        return ProblemData(make(n_train), make(n_val), make(n_test))

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        width = 16 if self.tiny else 100
        encoder = _mlp([self.in_dim, width, width, width, width], last_activation=True)
        return MultiTaskNet(encoder, [nn.Linear(width, self.out_dim) for _ in tasks])

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        y = batch.targets["y"]
        return [F.mse_loss(o, y[:, t]) for o, t in zip(outputs, tasks)]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        outputs = model(split.inputs)
        y = split.targets["y"]
        metrics: MetricTree = {}
        kpi: list[float] = []
        for o, t in zip(outputs, tasks):
            mse = float(((o - y[:, t]) ** 2).mean())
            metrics[self.task_names[t]] = {"nMSE": mse / float(self.sigmas[t]) ** 2}
            kpi.append(_clipped_r2(o, y[:, t]))
        return Evaluation(metrics, kpi)

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        inv = 1.0 / self.sigmas**2
        return [float(w) for w in self.T * inv / inv.sum()]

    def static_weights_label(self) -> str:
        return "the oracle w_t ∝ 1/σ_t² (Σ w = T)"

    def display_columns(self, metrics: MetricTree) -> dict[str, float]:
        values = [metrics[name]["nMSE"] for name in self.task_names]
        return {
            "mean nMSE": float(np.mean(values)),
            "worst nMSE": float(np.max(values)),
            f"nMSE σ={self.sigmas[0]:g}": values[0],
            f"nMSE σ={self.sigmas[-1]:g}": values[-1],
        }

    def display_higher_is_better(self) -> dict[str, bool]:
        return {k: False for k in self.display_columns(self._dummy_metrics())}

    def _dummy_metrics(self) -> MetricTree:
        return {name: {"nMSE": 1.0} for name in self.task_names}


# --------------------------------------------------------------------------- lookup
PROBLEMS: dict[str, type[Problem]] = {
    "digits": DigitsProblem,
    "denoise": DenoiseProblem,
    "synthetic": SyntheticProblem,
    "scale": ScaleProblem,
}


def get_problem(name: str, *, tiny: bool = False, num_tasks: int | None = None) -> Problem:
    """Build a problem by name (``num_tasks`` only for ``synthetic``)."""
    try:
        cls = PROBLEMS[name]
    except KeyError:
        raise ValueError(f"unknown problem {name!r}; choose from {sorted(PROBLEMS)}") from None
    if cls is SyntheticProblem:
        return SyntheticProblem(tiny=tiny, num_tasks=num_tasks or 10)
    return cls(tiny=tiny)
