"""The ``denoise`` problem: one task (denoising the digits) with three losses."""

from __future__ import annotations

from typing import ClassVar, Sequence

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
    SignTree,
    Split,
)
from mtl_fast.compare.problems.common import mlp, noisy_digits

__all__ = ["DenoiseProblem"]


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

    def load(self) -> ProblemData:
        _, _, clean, noisy, (train, val, test) = noisy_digits(self.tiny, self.noise, 1234)
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
        encoder = nn.Sequential(mlp([64, hidden, hidden, 64], last_activation=False), nn.Sigmoid())
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
        per_sample = {k: v.cpu().numpy() for k, v in (("PSNR", psnr), ("SSIM", ssim), ("MAE", mae))}
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
