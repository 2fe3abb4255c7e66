"""The ``multimnist`` problem: Sener & Koltun 2018's MultiMNIST protocol scaled to the 8×8 digits.

Sener & Koltun 2018 (§6.1) overlay two 28×28 MNIST digits on a 36×36 canvas, one at the top
left and one at the bottom right, each shifted by up to 4 pixels in each direction, and train a
LeNet-style shared encoder with two classification heads (the top-left digit and the
bottom-right digit). Here the same construction on scikit-learn's bundled 8×8 digits, scaled by
8/28: a 12×12 canvas, the top-left digit at (1, 1) and the bottom-right one at (3, 3), each
shifted by up to 1 pixel in each direction, overlaid with the pixel-wise maximum (the digits
overlap on 6×6 of their 8×8 pixels). Built deterministically (fixed seeds) from the stratified
train / validation / test split of the digits, so no digit image appears in two splits.
"""

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
from mtl_fast.compare.problems.common import load_digits, split_indices

__all__ = ["CANVAS", "MultiMNISTProblem", "overlay_pairs"]

#: Side in pixels of the square canvas the two 8×8 digits are overlaid on.
CANVAS = 12
#: top-left corner of the left and right digits before the shift
ANCHORS = ((1, 1), (3, 3))
MAX_SHIFT = 1


def overlay_pairs(
    pixels: np.ndarray, labels: np.ndarray, pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``pairs`` images of two overlaid digits drawn (seeded) from ``pixels`` [N, 64] (0..16).

    Returns the images [pairs, 12, 12] on [0, 1] (float32) and the left and right labels.
    """
    rng = np.random.default_rng(seed)
    first = rng.integers(0, len(labels), pairs)
    second = rng.integers(0, len(labels), pairs)
    shifts = rng.integers(-MAX_SHIFT, MAX_SHIFT + 1, size=(pairs, 2, 2))
    images = np.zeros((pairs, CANVAS, CANVAS), dtype=np.float32)
    digits = pixels.reshape(-1, 8, 8) / 16.0
    for k, source in enumerate((first, second)):
        (r0, c0) = ANCHORS[k]
        for i in range(pairs):
            r, c = r0 + shifts[i, k, 0], c0 + shifts[i, k, 1]
            window = images[i, r : r + 8, c : c + 8]
            np.maximum(window, digits[source[i]], out=window)
    return images, labels[first], labels[second]


class MultiMNISTProblem(Problem):
    """Two classification tasks on overlaid digit pairs (module docstring for the protocol).

    ======  ==============================  ============  ========
    task    loss                            test metric   KPI
    ======  ==============================  ============  ========
    left    cross-entropy, top-left digit   accuracy ↑    accuracy
    right   cross-entropy, bottom-right     accuracy ↑    accuracy
    ======  ==============================  ============  ========

    Model: a LeNet-style shared encoder (conv 3×3 ×16, ReLU, max-pool 2, conv 3×3 ×32, ReLU,
    linear to 64, ReLU) and one MLP head (64-32-10) per digit, as Sener & Koltun 2018's
    LeNet encoder with two heads, smaller for the 12×12 input. Pairs: 4 per training digit, 2
    per validation / test digit (fixed seeds).
    """

    name = "multimnist"
    title = "MultiMNIST from digits: two overlaid digits, two classifications"
    epochs = 20
    quick_epochs = 4
    batch_size = 128
    lr = 2e-3
    task_names: ClassVar[list[str]] = ["left", "right"]
    task_types: ClassVar[list[str]] = ["classification", "classification"]
    higher_is_better: ClassVar[SignTree] = {"left": {"acc": True}, "right": {"acc": True}}

    def description(self) -> str:
        d = self.data()
        return (
            "Sener & Koltun 2018's MultiMNIST scaled to scikit-learn's 8×8 digits: two digits "
            f"overlaid on a {CANVAS}×{CANVAS} canvas (top-left at (1, 1), bottom-right at "
            f"(3, 3), each shifted by up to {MAX_SHIFT} pixel, pixel-wise maximum), "
            f"{len(d.train)} / {len(d.val)} / {len(d.test)} train / validation / test images "
            "built from disjoint digit images. Tasks: classify the top-left and the "
            "bottom-right digit (cross-entropy; test accuracy ↑). Model: a small LeNet-style "
            "convolutional encoder and two MLP heads."
        )

    def load(self) -> ProblemData:
        pixels, digit = load_digits()
        if self.tiny:
            pixels, digit = pixels[:300], digit[:300]
        parts = split_indices(len(digit), (0.15, 0.25), 0, digit)
        out = []
        for k, (idx, per) in enumerate(zip(parts, (4, 2, 2))):
            images, left, right = overlay_pairs(pixels[idx], digit[idx], per * len(idx), 77 + k)
            targets = {"left": torch.from_numpy(left), "right": torch.from_numpy(right)}
            out.append(Split(torch.from_numpy(images).unsqueeze(1), targets))
        return ProblemData(*out)

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        c1, c2, width = (4, 8, 16) if self.tiny else (16, 32, 64)
        encoder = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * 4 * 4, width),
            nn.ReLU(),
        )
        heads = [
            nn.Sequential(nn.Linear(width, width // 2), nn.ReLU(), nn.Linear(width // 2, 10))
            for _ in tasks
        ]
        return MultiTaskNet(encoder, heads)

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        return [
            F.cross_entropy(o, batch.targets[self.task_names[t]]) for o, t in zip(outputs, tasks)
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        outputs = model(split.inputs)
        metrics: MetricTree = {}
        kpi: list[float] = []
        for o, t in zip(outputs, tasks):
            name = self.task_names[t]
            hit = (o.argmax(dim=1) == split.targets[name]).float()
            metrics[name] = {"acc": float(hit.mean())}
            kpi.append(float(hit.mean()))
        return Evaluation(metrics, kpi)
