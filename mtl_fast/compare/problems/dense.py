"""Dense-prediction tasks for the local-data scene problems (``nyuv2``, ``cityscapes``): the
losses, the metrics with their directions, a small shared encoder-decoder, and reading the
MTAN / LibMTL preprocessed ``.npy`` layout.

Losses and metrics follow Liu, Johns & Davison 2019 (MTAN), whose protocol Navon et al. 2022 and
Liu et al. 2023 use:

* segmentation: cross-entropy, label −1 ignored; test metrics mIoU ↑, pixel accuracy ↑;
* depth: L1 over the valid pixels (depth ≠ 0); absolute error ↓, relative error ↓;
* normal: 1 − cos(pred, gt) over the valid pixels (gt ≠ 0; prediction normalised); angle error
  mean ↓ and median ↓, % of pixels within 11.25° / 22.5° / 30° ↑.

The metrics are computed over all valid pixels of the split (mIoU from the split's confusion
matrix; the median angle from a 0.01° histogram), so they do not depend on the evaluation batch
size.
"""

from __future__ import annotations

import fnmatch
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ANGLE_BINS",
    "DenseMetrics",
    "SceneEncoder",
    "dense_head",
    "depth_loss",
    "load_npy_split",
    "normal_loss",
    "segmentation_loss",
]

#: the median angle error is read from a histogram with this many bins over [0°, 180°]
ANGLE_BINS = 18_000


# --------------------------------------------------------------------------- losses
def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the pixels with a label ≥ 0 (MTAN marks unlabelled pixels −1)."""
    return F.cross_entropy(logits, labels, ignore_index=-1)


def _valid(target: Tensor) -> Tensor:
    """[B, H, W] mask of the pixels with ground truth (a non-zero target vector)."""
    return target.abs().sum(dim=1) != 0


def depth_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean |pred − gt| over the pixels with depth (MTAN: depth 0 = no measurement)."""
    mask = _valid(target).unsqueeze(1).to(pred.dtype)
    return ((pred - target).abs() * mask).sum() / mask.sum().clamp_min(1.0)


def normal_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean 1 − cos(pred, gt) over the pixels with a ground-truth normal (pred normalised)."""
    mask = _valid(target).to(pred.dtype)
    cos = (F.normalize(pred, dim=1) * target).sum(dim=1)
    return ((1.0 - cos) * mask).sum() / mask.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- metrics
class DenseMetrics:
    """Accumulates the dense metrics of one split batch by batch (see the module docstring)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = int(num_classes)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.depth_abs = 0.0
        self.depth_rel = 0.0
        self.depth_n = 0
        self.angles = torch.zeros(ANGLE_BINS, dtype=torch.float64)
        self.angle_sum = 0.0

    def add_segmentation(self, logits: Tensor, labels: Tensor) -> None:
        """Add a batch's predicted classes (argmax of ``logits`` [B, C, H, W]) against
        ``labels`` [B, H, W] (−1: ignored) to the confusion matrix."""
        pred = logits.argmax(dim=1).flatten().cpu()
        gt = labels.flatten().cpu()
        keep = gt >= 0
        idx = gt[keep] * self.num_classes + pred[keep]
        counts = torch.bincount(idx, minlength=self.num_classes**2).to(torch.float64)
        self.confusion += counts.reshape(self.num_classes, self.num_classes)

    def add_depth(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch's absolute and relative depth errors over the pixels with depth."""
        mask = _valid(target).unsqueeze(1)
        err = (pred - target).abs()[mask].double().cpu()
        gt = target[mask].double().cpu()
        self.depth_abs += float(err.sum())
        self.depth_rel += float((err / gt.abs()).sum())
        self.depth_n += int(err.numel())

    def add_normal(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch's angle errors (degrees, 0.01° histogram) over the pixels with a normal."""
        mask = _valid(target)
        cos = (F.normalize(pred, dim=1) * target).sum(dim=1)[mask].clamp(-1.0, 1.0)
        deg = torch.rad2deg(torch.acos(cos.double().cpu()))
        self.angle_sum += float(deg.sum())
        self.angles += torch.histc(deg, bins=ANGLE_BINS, min=0.0, max=180.0).double()

    def segmentation(self) -> dict[str, float]:
        """mIoU (classes that occur in the ground truth or the prediction) and pixel accuracy."""
        c = self.confusion
        tp = c.diagonal()
        union = c.sum(0) + c.sum(1) - tp
        present = union > 0
        miou = float((tp[present] / union[present]).mean()) if bool(present.any()) else 0.0
        total = float(c.sum())
        return {"mIoU": miou, "pix_acc": float(tp.sum()) / total if total else 0.0}

    def depth(self) -> dict[str, float]:
        """The split's mean absolute and relative depth errors."""
        n = max(self.depth_n, 1)
        return {"abs_err": self.depth_abs / n, "rel_err": self.depth_rel / n}

    def normal(self) -> dict[str, float]:
        """The split's mean and median angle errors and the % of pixels within 11.25°, 22.5°
        and 30° (180° and 0 % when no pixel had a normal)."""
        total = float(self.angles.sum())
        if total == 0:
            return {"mean": 180.0, "median": 180.0, "within_11.25": 0.0, "within_22.5": 0.0,
                    "within_30": 0.0}  # fmt: skip
        width = 180.0 / ANGLE_BINS
        cum = torch.cumsum(self.angles, 0)
        median_bin = int(torch.searchsorted(cum, torch.tensor(total / 2.0, dtype=cum.dtype)))
        out = {"mean": self.angle_sum / total, "median": (median_bin + 0.5) * width}
        for t in (11.25, 22.5, 30.0):
            k = round(t / width)
            out[f"within_{t:g}"] = 100.0 * float(self.angles[:k].sum()) / total
        return out


# --------------------------------------------------------------------------- model
def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class SceneEncoder(nn.Module):
    """A small SegNet-style encoder-decoder (two 2× poolings and two 2× upsamplings, widths
    w, 2w, 4w): the shared per-pixel features [B, w, H, W] the task heads read. H and W must
    be divisible by 4. (Navon et al. 2022 and Liu et al. 2023 use MTAN, SegNet with attention
    modules; this one is far smaller, to run on a CPU.)"""

    def __init__(self, width: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        w = int(width)
        self.down1 = _block(in_channels, w)
        self.down2 = _block(w, 2 * w)
        self.bottom = _block(2 * w, 4 * w)
        self.up2 = _block(4 * w + 2 * w, 2 * w)
        self.up1 = _block(2 * w + w, w)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by 4")
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        b = self.bottom(F.max_pool2d(d2, 2))
        u2 = self.up2(torch.cat([F.interpolate(b, scale_factor=2.0, mode="nearest"), d2], 1))
        return self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), d1], 1))


def dense_head(width: int, out_channels: int) -> nn.Sequential:
    """A task head: 3×3 conv, ReLU, 1×1 conv to ``out_channels`` per pixel."""
    return nn.Sequential(
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, out_channels, 1)
    )


# --------------------------------------------------------------------------- data
def _count(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    return len(fnmatch.filter(os.listdir(folder), "*.npy"))


def load_npy_split(
    root: Path,
    split: str,
    parts: Sequence[str],
    *,
    limit: int | None = None,
    image_size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Read ``root/split/<part>/<i>.npy`` for i = 0 .. N − 1 (the MTAN / LibMTL layout:
    ``image`` [H, W, 3], labels [H, W] with −1 for unlabelled pixels, ``depth`` [H, W, 1],
    ``normal`` [H, W, 3]).

    Returns ``{part: tensor [N, C, H, W]}`` (labels: int64 [N, H, W]); with ``image_size``
    images are resized bilinearly, depth and normals by the nearest pixel, labels by the
    nearest pixel (normals renormalised). ``limit``: the first ``limit`` samples only.

    Raises:
        FileNotFoundError: the layout is not there (the message lists what is missing).
    """
    base = root / split
    counts = {p: _count(base / p) for p in parts}
    missing = [f"{split}/{p}/*.npy" for p, c in counts.items() if c == 0]
    if missing:
        raise FileNotFoundError(
            f"{root} does not hold the MTAN/LibMTL preprocessed layout: no {', '.join(missing)} "
            f"(expected {', '.join(f'{split}/{p}/0.npy' for p in parts)}, ...)"
        )
    n = min(counts.values())
    if len(set(counts.values())) > 1:
        raise FileNotFoundError(
            f"{base}: the folders hold different numbers of samples {counts}; each sample i "
            "needs one file i.npy in every folder"
        )
    if limit is not None:
        n = min(n, int(limit))
    out: dict[str, list[Tensor]] = {p: [] for p in parts}
    for i in range(n):
        for p in parts:
            path = base / p / f"{i}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"missing {path} (samples are numbered 0 .. {n - 1})")
            a = np.load(path)
            out[p].append(_to_tensor(a, p, image_size))
    return {p: torch.stack(v) for p, v in out.items()}


def _to_tensor(a: np.ndarray, part: str, size: tuple[int, int] | None) -> Tensor:
    if part.startswith("label"):
        t = torch.from_numpy(np.asarray(a, dtype=np.float32)).round().to(torch.int64)
        if t.ndim == 3:
            t = t.squeeze(-1)
        if size is not None and tuple(t.shape) != tuple(size):
            t = F.interpolate(t[None, None].float(), size=size, mode="nearest")[0, 0].long()
        return t
    t = torch.from_numpy(np.asarray(a, dtype=np.float32))
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    t = t.permute(2, 0, 1).contiguous()  # HWC → CHW
    if size is not None and tuple(t.shape[-2:]) != tuple(size):
        mode = "bilinear" if part == "image" else "nearest"
        kw = {"align_corners": False} if mode == "bilinear" else {}
        t = F.interpolate(t[None], size=size, mode=mode, **kw)[0]
        if part == "normal":
            norm = t.norm(dim=0, keepdim=True)
            t = torch.where(norm > 0, t / norm.clamp_min(1e-12), t)
    return t


def check_divisible(size: tuple[int, int]) -> tuple[int, int]:
    """``size`` rounded down to multiples of 4 (the encoder pools twice)."""
    h, w = (int(math.floor(s / 4.0) * 4) for s in size)
    if h < 4 or w < 4:
        raise ValueError(f"image size {size} is too small (at least 4×4)")
    return h, w
