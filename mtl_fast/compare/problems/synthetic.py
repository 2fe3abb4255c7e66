"""The ``synthetic`` problem: GradNorm's regression benchmark with T tasks."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_fast.compare.problems.base import (
    Evaluation,
    MetricTree,
    MultiTaskNet,
    Problem,
    ProblemData,
    Split,
)
from mtl_fast.compare.problems.common import clipped_r2, mlp

__all__ = ["SyntheticProblem"]


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
    variable_tasks = True
    default_num_tasks = 10
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

    def load(self) -> ProblemData:
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
        encoder = mlp([self.in_dim, width, width, width, width], last_activation=True)
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
            kpi.append(clipped_r2(o, y[:, t]))
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
