"""Helpers shared by several problems: MLP blocks, the clipped-R² KPI, deterministic splits and
scikit-learn's bundled 8×8 digits (loaded once, with an optional fixed noisy copy)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["clipped_r2", "load_digits", "mlp", "noisy_digits", "split_indices"]


def mlp(sizes: Sequence[int], *, last_activation: bool) -> nn.Sequential:
    """Linear layers of the given ``sizes`` with ReLUs between them (and after the last when
    ``last_activation``)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def clipped_r2(pred: Tensor, target: Tensor) -> float:
    """max(0, 1 − SSE/SST): the regression KPI in [0, 1] handed to AMTL and DTP."""
    sse = float(((pred - target) ** 2).sum())
    sst = float(((target - target.mean(dim=0, keepdim=True)) ** 2).sum())
    if sst <= 0.0:
        return 0.0
    return max(0.0, 1.0 - sse / sst)


def noisy_digits(tiny: bool, sigma: float, seed: int):
    """The digits (300 with ``tiny``): pixels (0..16), labels, clean images on [0, 1], a fixed
    Gaussian-noise copy (σ, seeded, clamped to [0, 1]) and the stratified train / validation /
    test indices."""
    pixels, digit = load_digits()
    if tiny:
        pixels, digit = pixels[:300], digit[:300]
    splits = split_indices(len(digit), (0.15, 0.25), 0, digit)
    clean = torch.from_numpy(pixels / 16.0)
    gen = torch.Generator().manual_seed(seed)
    noisy = (clean + sigma * torch.randn(clean.shape, generator=gen)).clamp(0.0, 1.0)
    return pixels, digit, clean, noisy, splits


def split_indices(
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


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: pixels [1797, 64] in 0..16 (float32) and labels (int64)."""
    from sklearn import datasets

    bunch = datasets.load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)
