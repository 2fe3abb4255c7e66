"""The local-data scene problems: ``nyuv2`` (13-class segmentation, depth, surface normals) and
``cityscapes`` (7-class segmentation, depth), read from the MTAN / LibMTL preprocessed ``.npy``
layout of a folder you already have (``--data-root PATH``; nothing is downloaded).

Layout (Liu, Johns & Davison 2019's preprocessed release, also used by Navon et al. 2022, Liu et
al. 2023 and LibMTL)::

    PATH/train/image/0.npy ...   float [H, W, 3]
    PATH/train/label/0.npy ...   [H, W], class index, −1 = unlabelled     (cityscapes: label_7/)
    PATH/train/depth/0.npy ...   float [H, W, 1], 0 = no measurement
    PATH/train/normal/0.npy ...  float [H, W, 3], unit vectors, 0 = none  (nyuv2 only)
    PATH/val/...                 the same: the papers' test split

The papers report on ``val``; here ``val`` is the test split too, and the validation split (for
the AMTL / DTP KPIs and AMTL's potentials) is a fixed 10 % of ``train`` (every tenth sample),
not trained on. Tasks, losses and metrics: :mod:`mtl_fast.compare.problems.dense`; Δ_MTL is the
papers' flat mean over all metrics (:attr:`Problem.delta_averages` = ``"metrics"``).

Differences from the papers' protocol: a much smaller shared encoder-decoder
(:class:`~mtl_fast.compare.problems.dense.SceneEncoder`, not MTAN), no learning-rate halving at
epoch 100, and the last epoch's model is evaluated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from mtl_fast.compare.problems.base import (
    Evaluation,
    MultiTaskNet,
    Problem,
    ProblemData,
    SignTree,
    Split,
)
from mtl_fast.compare.problems.dense import (
    DenseMetrics,
    SceneEncoder,
    check_divisible,
    dense_head,
    depth_loss,
    load_npy_split,
    normal_loss,
    segmentation_loss,
)

__all__ = ["CityscapesProblem", "NYUv2Problem", "SceneProblem"]

_SEG = {"mIoU": True, "pix_acc": True}
_DEPTH = {"abs_err": False, "rel_err": False}
_NORMAL = {"mean": False, "median": False, "within_11.25": True, "within_22.5": True,
           "within_30": True}  # fmt: skip


class SceneProblem(Problem):
    """Common code of ``nyuv2`` and ``cityscapes`` (module docstring).

    Args:
        data_root: the folder holding ``train/`` and ``val/`` in the MTAN layout.
        image_size: (H, W) to resize to (rounded down to multiples of 4); None: the files' size.
        limit: read only the first ``limit`` samples of each split (quick looks on a CPU).
        width: the encoder's base width (16; the heads use it too).
        tiny: a tiny model and 2 epochs (tests).
    """

    delta_averages = "metrics"
    #: the files' label folder
    label_folder: ClassVar[str] = "label"
    num_classes: ClassVar[int] = 0
    #: the papers' image size (H, W)
    paper_size: ClassVar[tuple[int, int]] = (0, 0)
    eval_batch: ClassVar[int] = 8

    def __init__(
        self,
        *,
        data_root: str | Path | None = None,
        image_size: tuple[int, int] | None = None,
        limit: int | None = None,
        width: int = 16,
        tiny: bool = False,
    ) -> None:
        super().__init__(tiny=tiny)
        if data_root is None:
            raise ValueError(
                f"the {self.name} problem reads a local copy of the data: pass --data-root PATH "
                f"(data_root=...), the folder holding train/ and val/ in the MTAN/LibMTL "
                f"preprocessed layout (docs/compare.md, 'Local data')"
            )
        self.data_root = Path(data_root).expanduser()
        if not self.data_root.is_dir():
            raise ValueError(f"--data-root {self.data_root}: no such folder")
        self.image_size = None if image_size is None else check_divisible(tuple(image_size))
        self.limit = limit
        self.width = 4 if tiny else int(width)
        if tiny:
            self.epochs = 2  # type: ignore[misc]
        self.higher_is_better: SignTree = {t: dict(self._metric_flags[t]) for t in self.task_names}

    _metric_flags: ClassVar[dict[str, dict[str, bool]]] = {}
    _out_channels: ClassVar[dict[str, int]] = {}

    def _parts(self) -> list[str]:
        parts = ["image", self.label_folder, "depth"]
        return parts + (["normal"] if "normal" in self.task_names else [])

    def description(self) -> str:
        d = self.data()
        h, w = d.train.inputs.shape[-2:]
        return (
            f"{self.title} from the local folder `{self.data_root}` (MTAN/LibMTL preprocessed "
            f"layout): {len(d.train)} / {len(d.val)} / {len(d.test)} train / validation / test "
            f"images of {h}×{w} (the papers: {self.paper_size[0]}×{self.paper_size[1]}); "
            "validation = every tenth training image, test = the `val` folder. Tasks: "
            + ", ".join(self.task_names)
            + f"; a SegNet-style shared encoder-decoder of width {self.width} and a small "
            "convolutional head per task. Δ_MTL is the flat mean over all metrics (the papers' "
            "Δm%)."
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "data_root": str(self.data_root), "limit": self.limit,
                "image_size": self.image_size, "width": self.width}  # fmt: skip

    def load(self) -> ProblemData:
        parts = self._parts()
        train = load_npy_split(
            self.data_root, "train", parts, limit=self.limit, image_size=self.image_size
        )
        test = load_npy_split(
            self.data_root, "val", parts, limit=self.limit, image_size=self.image_size
        )
        n = len(train["image"])
        if n < 2:
            raise ValueError(f"{self.data_root}/train holds {n} sample(s); at least 2 are needed")
        is_val = torch.arange(n) % 10 == 9 if n >= 10 else torch.arange(n) == n - 1
        return ProblemData(
            self._split(train, ~is_val), self._split(train, is_val), self._split(test, None)
        )

    def _split(self, arrays: dict[str, Tensor], keep: Tensor | None) -> Split:
        pick = (lambda t: t[keep]) if keep is not None else (lambda t: t)
        targets = {"segmentation": pick(arrays[self.label_folder]), "depth": pick(arrays["depth"])}
        if "normal" in arrays:
            targets["normal"] = pick(arrays["normal"])
        return Split(pick(arrays["image"]), targets)

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        heads = [dense_head(self.width, self._out_channels[self.task_names[t]]) for t in tasks]
        return MultiTaskNet(SceneEncoder(self.width), heads)

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        y = batch.targets
        out = []
        for o, t in zip(outputs, tasks):
            name = self.task_names[t]
            if name == "segmentation":
                out.append(segmentation_loss(o, y["segmentation"]))
            elif name == "depth":
                out.append(depth_loss(o, y["depth"]))
            else:
                out.append(normal_loss(o, y["normal"]))
        return out

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        acc = DenseMetrics(self.num_classes)
        names = [self.task_names[t] for t in tasks]
        for i in range(0, len(split), self.eval_batch):
            part = split.take(slice(i, i + self.eval_batch))
            for name, o in zip(names, model(part.inputs)):
                if name == "segmentation":
                    acc.add_segmentation(o, part.targets["segmentation"])
                elif name == "depth":
                    acc.add_depth(o, part.targets["depth"])
                else:
                    acc.add_normal(o, part.targets["normal"])
        metrics: dict[str, dict[str, float]] = {}
        kpi: list[float] = []
        for name in names:
            if name == "segmentation":
                metrics[name] = acc.segmentation()
                kpi.append(metrics[name]["mIoU"])
            elif name == "depth":
                metrics[name] = acc.depth()
                kpi.append(max(0.0, min(1.0, 1.0 - metrics[name]["rel_err"])))
            else:
                metrics[name] = acc.normal()
                kpi.append(metrics[name]["within_30"] / 100.0)
        return Evaluation(metrics, kpi)

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        """1 / L_t at initialisation on the first 8 training images (Σ w = T)."""
        batch = self.data().train.take(slice(0, 8))
        tasks = list(range(self.num_tasks))
        with torch.no_grad():
            values = [float(v) for v in self.scaled_losses(model(batch.inputs), batch, tasks)]
        inv = [1.0 / max(v, 1e-12) for v in values]
        return [self.num_tasks * w / sum(inv) for w in inv]


class NYUv2Problem(SceneProblem):
    """NYUv2 (Silberman et al. 2012) in the MTAN layout: 13-class segmentation, depth and
    surface normals; 795 train / 654 test images of 288×384 in the papers, which train MTAN
    for 200 epochs with Adam 1e-4 (halved at 100) and batch 2."""

    name = "nyuv2"
    title = "NYUv2: segmentation, depth, surface normals (local data)"
    task_names: ClassVar[list[str]] = ["segmentation", "depth", "normal"]
    task_types: ClassVar[list[str]] = ["classification", "regression", "regression"]
    num_classes = 13
    paper_size = (288, 384)
    epochs = 200
    quick_epochs = 5
    batch_size = 2
    lr = 1e-4
    _metric_flags: ClassVar[dict[str, dict[str, bool]]] = {
        "segmentation": _SEG,
        "depth": _DEPTH,
        "normal": _NORMAL,
    }
    _out_channels: ClassVar[dict[str, int]] = {"segmentation": 13, "depth": 1, "normal": 3}


class CityscapesProblem(SceneProblem):
    """Cityscapes (Cordts et al. 2016) in the MTAN layout: 7-class segmentation (``label_7``)
    and depth; 2975 train / 500 test images of 128×256 in the papers (200 epochs, Adam 1e-4,
    batch 8)."""

    name = "cityscapes"
    title = "Cityscapes: 7-class segmentation and depth (local data)"
    label_folder = "label_7"
    task_names: ClassVar[list[str]] = ["segmentation", "depth"]
    task_types: ClassVar[list[str]] = ["classification", "regression"]
    num_classes = 7
    paper_size = (128, 256)
    epochs = 200
    quick_epochs = 5
    batch_size = 8
    lr = 1e-4
    _metric_flags: ClassVar[dict[str, dict[str, bool]]] = {"segmentation": _SEG, "depth": _DEPTH}
    _out_channels: ClassVar[dict[str, int]] = {"segmentation": 7, "depth": 1}
