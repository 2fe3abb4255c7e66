"""The ``digits`` problem: five tasks with different losses and scales on the 8×8 digits."""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl_fast.compare.problems.base import (
    Evaluation,
    MetricTree,
    MultiTaskNet,
    Problem,
    ProblemData,
    SignTree,
    Split,
)
from mtl_fast.compare.problems.common import clipped_r2, mlp, noisy_digits

__all__ = ["DigitsProblem"]


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

    def load(self) -> ProblemData:
        pixels, digit, _, x, (train, val, test) = noisy_digits(self.tiny, self.input_noise, 4321)
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
        encoder = mlp([64, hidden, width], last_activation=True)
        heads = [
            mlp([width, width, self._out_dims[self.task_names[t]]], last_activation=False)
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
                value = clipped_r2(pred, y[name])
            kpi.append(value)
        return Evaluation(metrics, kpi)
