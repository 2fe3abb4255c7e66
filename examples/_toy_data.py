"""Synthetic data and a small shared-encoder model for the integration examples.

Three regression tasks on x ∈ R^16 whose losses differ in scale by 100× (what task weighting is
for): y_t = s_t · (a noisy function of x) with s = (1, 10, 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf

TASKS = ("depth", "normals", "edges")
SCALES = (1.0, 10.0, 0.1)


def make_data(n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(x [n, 16], y [n, 3])."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=gen)
    w = torch.randn(16, 3, generator=gen) / 4
    y = torch.tanh(x @ w) + 0.05 * torch.randn(n, 3, generator=gen)
    return x, y * torch.tensor(SCALES)


class SharedEncoderModel(nn.Module):
    """Encoder 16 → 32 → 32 and one linear head per task."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(16, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in TASKS)

    def task_losses(self, x: Tensor, y: Tensor, method: mf.Weighting) -> list[Tensor]:
        """The T losses, with ``method.split`` between the encoder and the heads."""
        zs = method.split(self.encoder(x), num_tasks=len(TASKS))
        return [
            F.mse_loss(head(z).squeeze(-1).float(), y[:, t])
            for t, (head, z) in enumerate(zip(self.heads, zs))
        ]
