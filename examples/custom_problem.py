"""Your own problem in ``mtl-fast compare``: a worked example of the Problem protocol.

Run it with::

    mtl-fast compare --problem examples/custom_problem.py:make_problem --methods equal,IMTLG,UW
    python examples/custom_problem.py        # the same through the Python API, mf.compare.run

Two tasks on scikit-learn's bundled diabetes data (442 patients, 10 features): regress the
disease progression (MSE on the standardised target; metric MAE ↓) and classify whether it is
above the training median (binary cross-entropy; metric accuracy ↑). See docs/compare.md.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_fast.compare.problems import (
    Evaluation,
    MultiTaskNet,
    Problem,
    ProblemData,
    Split,
)


class DiabetesProblem(Problem):
    """Progression (regression) and progression above the median (classification)."""

    name = "diabetes"
    title = "Diabetes: progression value and above-median class"
    epochs = 30
    batch_size = 32
    lr = 3e-3
    task_names: ClassVar[list[str]] = ["progression", "high"]
    task_types: ClassVar[list[str]] = ["regression", "classification"]
    higher_is_better: ClassVar[dict[str, dict[str, bool]]] = {
        "progression": {"MAE": False},
        "high": {"acc": True},
    }

    def description(self) -> str:
        return "scikit-learn's diabetes data: progression (MAE ↓) and above-median (accuracy ↑)."

    def load(self) -> ProblemData:
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        g = torch.Generator().manual_seed(0)
        order = torch.randperm(len(y), generator=g)
        x = torch.tensor(x, dtype=torch.float32)[order]
        y = torch.tensor(y, dtype=torch.float32)[order]
        train = slice(0, 300)
        mean, std = y[train].mean(), y[train].std()
        targets = {"progression": (y - mean) / std, "high": (y > y[train].median()).float()}
        x = (x - x[train].mean(0)) / x[train].std(0)
        full = Split(x, targets)
        val, test = full.take(slice(300, 360)), full.take(slice(360, None))
        return ProblemData(full.take(train), val, test)

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        encoder = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        return MultiTaskNet(encoder, [nn.Linear(16, 1) for _ in tasks])

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        out = []
        for o, t in zip(outputs, tasks):
            y = batch.targets[self.task_names[t]]
            if t == 0:
                out.append(F.mse_loss(o.squeeze(1), y))
            else:
                out.append(F.binary_cross_entropy_with_logits(o.squeeze(1), y))
        return out

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        metrics: dict[str, dict[str, float]] = {}
        kpi = []
        for o, t in zip(model(split.inputs), tasks):
            name = self.task_names[t]
            y = split.targets[name]
            if t == 0:
                mae = float((o.squeeze(1) - y).abs().mean())
                metrics[name] = {"MAE": mae}
                kpi.append(max(0.0, 1.0 - mae))  # standardised target: 1 − MAE/σ, clipped
            else:
                acc = float(((o.squeeze(1) > 0).float() == y).float().mean())
                metrics[name] = {"acc": acc}
                kpi.append(acc)
        return Evaluation(metrics, kpi)


def make_problem() -> DiabetesProblem:
    """The factory ``mtl-fast compare --problem examples/custom_problem.py:make_problem`` calls."""
    return DiabetesProblem()


if __name__ == "__main__":
    import mtl_fast as mf

    result = mf.compare.run(make_problem(), methods=["equal", "IMTLG", "UW"], seeds=3)
    for name, outcome in result.methods.items():
        print(f"{name:>22}: Δ_MTL {outcome.delta_mtl:+.2f} % ± {outcome.delta_mtl_std:.2f}, "
              f"average rank {outcome.rank:.2f}, {outcome.ms_per_step:.2f} ms/step")  # fmt: skip
