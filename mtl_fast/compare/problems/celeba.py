"""The local-data ``celeba`` problem: CelebA's 40 binary face attributes (Liu et al. 2015) as 40
tasks, read from a folder you already have (``--data-root PATH``; nothing is downloaded).

Layout: the official release's, or the same three items flat in one folder::

    PATH/Anno/list_attr_celeba.txt     (or PATH/list_attr_celeba.txt)
    PATH/Eval/list_eval_partition.txt  (or PATH/list_eval_partition.txt)
    PATH/Img/img_align_celeba/*.jpg    (or PATH/img_align_celeba/*.jpg)

``list_attr_celeba.txt``: the number of images, the 40 attribute names, then one line per image
``<file> ±1 × 40``; ``list_eval_partition.txt``: ``<file> 0|1|2`` (train / validation / test).
As in Liu et al. 2023 (FAMO), images are resized to 64×64; each task is a binary cross-entropy
on one attribute, and the test metric is the attribute's F1 score (↑; the Δm% of FAMO's Table
3); the KPI handed to AMTL / DTP is the validation accuracy. The decoded images are cached as
uint8 arrays (``$MTL_FAST_CACHE/celeba``, keyed by the folder, the size and the limit) so later
runs skip the JPEG decoding. Needs Pillow (a dependency of matplotlib, the ``cli`` extra).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
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
    SignTree,
    Split,
)

__all__ = ["CelebAProblem", "f1_scores", "read_attributes", "read_partition"]

NUM_ATTRIBUTES = 40


def _find(root: Path, *candidates: str) -> Path:
    for c in candidates:
        if (root / c).exists():
            return root / c
    raise FileNotFoundError(
        f"{root} does not hold the CelebA layout: none of {', '.join(candidates)} "
        "(docs/compare.md, 'Local data')"
    )


def read_attributes(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """``list_attr_celeba.txt`` → (attribute names, file names, labels int8 [N, 40] in {0, 1})."""
    with open(path) as f:
        lines = [ln.split() for ln in f.read().splitlines() if ln.strip()]
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a names line")
    names = lines[1]
    if len(names) != NUM_ATTRIBUTES:
        raise ValueError(f"{path}: {len(names)} attribute names, expected {NUM_ATTRIBUTES}")
    files, rows = [], []
    for k, ln in enumerate(lines[2:], start=3):
        if len(ln) != NUM_ATTRIBUTES + 1:
            raise ValueError(f"{path}, line {k}: {len(ln) - 1} values, expected {NUM_ATTRIBUTES}")
        files.append(ln[0])
        rows.append([1 if v == "1" else 0 for v in ln[1:]])
    count = int(lines[0][0])
    if count != len(files):
        raise ValueError(f"{path}: the header says {count} images, the file lists {len(files)}")
    return names, files, np.asarray(rows, dtype=np.int8)


def read_partition(path: Path) -> dict[str, int]:
    """``list_eval_partition.txt`` → {file: 0 (train) | 1 (validation) | 2 (test)}."""
    out: dict[str, int] = {}
    with open(path) as f:
        for ln in f.read().splitlines():
            parts = ln.split()
            if len(parts) == 2:
                out[parts[0]] = int(parts[1])
    return out


def f1_scores(logits: Tensor, labels: Tensor) -> Tensor:
    """F1 per column of ``labels`` [N, K] in {0, 1}, predicting 1 where sigmoid(logit) > 0.5."""
    pred = (logits > 0).to(torch.float64)
    y = labels.to(torch.float64)
    tp = (pred * y).sum(0)
    fp = (pred * (1 - y)).sum(0)
    fn = ((1 - pred) * y).sum(0)
    denom = 2 * tp + fp + fn
    return torch.where(denom > 0, 2 * tp / denom.clamp_min(1e-12), torch.zeros_like(tp))


def _load_images(folder: Path, files: Sequence[str], size: int) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            "the celeba problem decodes JPEGs with Pillow: pip install pillow (or "
            '"mtl_fast[cli]", whose matplotlib depends on it)'
        ) from None
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, name in enumerate(files):
        with Image.open(folder / name) as im:
            rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
            out[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    return out


class CelebAProblem(Problem):
    """40 binary attributes of CelebA on a small convolutional encoder (module docstring).

    Args:
        data_root: the CelebA folder.
        image_size: side of the square images (64, as Liu et al. 2023).
        limit: use at most ``limit`` images of each partition (the first ones).
        tiny: a tiny model and 2 epochs (tests).
    """

    name = "celeba"
    title = "CelebA: 40 binary face attributes (local data)"
    epochs = 15
    quick_epochs = 2
    batch_size = 256
    lr = 3e-4

    def __init__(
        self,
        *,
        data_root: str | Path | None = None,
        image_size: int = 64,
        limit: int | None = None,
        tiny: bool = False,
    ) -> None:
        super().__init__(tiny=tiny)
        if data_root is None:
            raise ValueError(
                "the celeba problem reads a local copy of CelebA: pass --data-root PATH "
                "(data_root=...), the folder holding list_attr_celeba.txt, "
                "list_eval_partition.txt and img_align_celeba/ (docs/compare.md, 'Local data')"
            )
        self.data_root = Path(data_root).expanduser()
        if not self.data_root.is_dir():
            raise ValueError(f"--data-root {self.data_root}: no such folder")
        self.attr_file = _find(self.data_root, "Anno/list_attr_celeba.txt", "list_attr_celeba.txt")
        self.partition_file = _find(
            self.data_root, "Eval/list_eval_partition.txt", "list_eval_partition.txt"
        )
        self.image_dir = _find(self.data_root, "Img/img_align_celeba", "img_align_celeba")
        if image_size < 8 or image_size % 8:
            raise ValueError(f"image_size must be a multiple of 8 (≥ 8); got {image_size}")
        self.image_size = int(image_size)
        self.limit = limit
        self.width = 4 if tiny else 32
        if tiny:
            self.epochs = 2  # type: ignore[misc]
        names, _, _ = read_attributes(self.attr_file)
        self.task_names: list[str] = names  # type: ignore[misc]
        self.task_types: list[str] = ["classification"] * NUM_ATTRIBUTES  # type: ignore[misc]
        self.higher_is_better: SignTree = {n: {"F1": True} for n in names}

    def description(self) -> str:
        d = self.data()
        return (
            f"CelebA (Liu et al. 2015) from the local folder `{self.data_root}`: "
            f"{len(d.train)} / {len(d.val)} / {len(d.test)} train / validation / test images "
            f"(the official partition) at {self.image_size}×{self.image_size}; 40 binary "
            "attributes, one binary cross-entropy each; test metric F1 per attribute (↑), as "
            "Liu et al. 2023. Model: a 4-block convolutional encoder and one linear head per "
            "attribute."
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "data_root": str(self.data_root), "limit": self.limit,
                "image_size": self.image_size}  # fmt: skip

    def _cache_path(self, files: Sequence[str]) -> Path:
        root = os.environ.get("MTL_FAST_CACHE") or str(Path.home() / ".cache" / "mtl_fast")
        key = hashlib.sha1(
            f"{self.image_dir.resolve()}|{self.image_size}|".encode() + "\n".join(files).encode()
        ).hexdigest()[:16]
        return Path(root) / "celeba" / f"images-{key}.npy"

    def load(self) -> ProblemData:
        _, files, labels = read_attributes(self.attr_file)
        partition = read_partition(self.partition_file)
        missing = [f for f in files if f not in partition]
        if missing:
            raise ValueError(
                f"{self.partition_file} lacks {len(missing)} of the images of "
                f"{self.attr_file} (first: {missing[0]})"
            )
        splits = []
        for part in (0, 1, 2):
            idx = [i for i, f in enumerate(files) if partition[f] == part]
            if self.limit is not None:
                idx = idx[: int(self.limit)]
            if not idx:
                raise ValueError(f"{self.partition_file}: no image in partition {part}")
            names = [files[i] for i in idx]
            cache = self._cache_path(names)
            if cache.is_file():
                images = np.load(cache)
            else:
                images = _load_images(self.image_dir, names, self.image_size)
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + f".{os.getpid()}.tmp.npy")
                np.save(tmp, images)
                os.replace(tmp, cache)
            y = torch.from_numpy(labels[idx].astype(np.float32))
            splits.append(Split(torch.from_numpy(images), {"attributes": y}))
        return ProblemData(*splits)

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        w = self.width
        layers: list[nn.Module] = []
        cin = 3
        for cout in (w, 2 * w, 4 * w):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                       nn.MaxPool2d(2)]  # fmt: skip
            cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 4 * w), nn.ReLU()]
        encoder = _Scaled(nn.Sequential(*layers))
        return MultiTaskNet(encoder, [nn.Linear(4 * w, 1) for _ in tasks])

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        y = batch.targets["attributes"]
        return [
            F.binary_cross_entropy_with_logits(o.squeeze(1), y[:, t])
            for o, t in zip(outputs, tasks)
        ]

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        tasks = list(tasks)
        logits = []
        for i in range(0, len(split), 1024):
            part = split.take(slice(i, i + 1024))
            logits.append(torch.cat(model(part.inputs), dim=1).cpu())
        z = torch.cat(logits)
        y = split.targets["attributes"][:, tasks].cpu()
        f1 = f1_scores(z, y)
        acc = ((z > 0).float() == y).float().mean(0)
        metrics: MetricTree = {
            self.task_names[t]: {"F1": float(f1[k])} for k, t in enumerate(tasks)
        }
        return Evaluation(metrics, [float(a) for a in acc])

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        """1 / L_t at initialisation on the first 256 training images (Σ w = T)."""
        batch = self.data().train.take(slice(0, 256))
        tasks = list(range(self.num_tasks))
        with torch.no_grad():
            values = [float(v) for v in self.scaled_losses(model(batch.inputs), batch, tasks)]
        inv = [1.0 / max(v, 1e-12) for v in values]
        return [self.num_tasks * w / sum(inv) for w in inv]


class _Scaled(nn.Module):
    """The encoder on uint8 images: divides by 255 first (the images stay uint8 in memory)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.to(torch.float32) / 255.0)
