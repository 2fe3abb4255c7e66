"""The interface of a comparison problem: data splits, the evaluation record, the shared-encoder
model and the :class:`Problem` base class that every problem module subclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "Evaluation",
    "MetricTree",
    "MultiTaskNet",
    "Problem",
    "ProblemData",
    "SignTree",
    "Split",
]

MetricTree = dict[str, dict[str, float]]
SignTree = dict[str, dict[str, bool]]


# --------------------------------------------------------------------------- data containers
@dataclass
class Split:
    """One data split: the model inputs and named target tensors (first dimension = samples)."""

    inputs: Any  # a Tensor, or any batch type supporting len() and indexing (qm9's graphs)
    targets: dict[str, Tensor]

    def __len__(self) -> int:
        return len(self.inputs)

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
    #: the constructor takes ``num_tasks`` (T chosen by the user, e.g. ``synthetic``)
    variable_tasks: ClassVar[bool] = False
    #: T when ``variable_tasks`` and none is given
    default_num_tasks: ClassVar[int] = 0
    #: a problem whose single-task baselines this one reuses (``scale`` reuses ``digits``): the
    #: report shows every metric's change from that problem's run of the same method
    reference_problem: ClassVar[str | None] = None
    #: how Δ_MTL averages: ``"tasks"`` (Yun & Cho 2023 eq. 7: over each task's metrics, then over
    #: the tasks) or ``"metrics"`` (one flat mean over every metric, Navon et al. 2022's and Liu
    #: et al. 2023's Δm% for NYUv2 / Cityscapes)
    delta_averages: ClassVar[str] = "tasks"
    #: a published table this problem's results are set beside (:mod:`mtl_fast.compare.published`;
    #: ``"qm9"``), or None
    published: ClassVar[str | None] = None

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
    def _missing(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"{type(self).__name__} must implement {what} (the Problem protocol: "
            "docs/compare.md, 'Your own problem')"
        )

    def description(self) -> str:
        """A Markdown paragraph describing the problem, the metrics and the baseline."""
        raise self._missing("description()")

    def load(self) -> ProblemData:
        """The train / validation / test splits (called once by :meth:`data`; deterministic)."""
        raise self._missing("load()")

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        """A freshly initialised model with heads for the given task indices (uses the global
        torch RNG: seed it first)."""
        raise self._missing("build_model(tasks)")

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        """The scalar losses of ``tasks`` (one per head of the model)."""
        raise self._missing("losses(outputs, batch, tasks)")

    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        """Metrics, KPIs (and per-sample metrics where defined) of ``model`` on ``split``."""
        raise self._missing("evaluate(model, split, tasks)")

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
            self._data = self.load()
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

    def delta_mtl(self, results: MetricTree, baseline: MetricTree) -> float:
        """Δ_MTL % of ``results`` against ``baseline`` (higher is better), averaged as
        :attr:`delta_averages` says."""
        from mtl_fast import metrics as mtl_metrics

        hib = self.higher_is_better
        if self.delta_averages == "metrics":
            flat = {f"{t}/{m}": {m: v} for t, ms in results.items() for m, v in ms.items()}
            base = {f"{t}/{m}": {m: v} for t, ms in baseline.items() for m, v in ms.items()}
            signs = {f"{t}/{m}": {m: h} for t, ms in hib.items() for m, h in ms.items()}
            return mtl_metrics.delta_mtl(flat, base, signs)
        return mtl_metrics.delta_mtl(results, baseline, hib)

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
