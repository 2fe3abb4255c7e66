"""PyTorch Lightning with automatic optimization: ``MultiTaskCallback`` does the method's
bookkeeping (lifecycle hooks, the weights logged per task, the method's optimizer group,
skipped batches, the method's state in checkpoints). Needs ``pip install "mtl_fast[lightning]"``.

    python examples/lightning_train.py   # IMTL, bf16-mixed, 2 accumulated batches, clipping
    python examples/lightning_train.py --method DWA --precision 32-true
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _toy_data import TASKS, SharedEncoderModel, make_data

import mtl_fast as mf
from mtl_fast.integrations.lightning import MultiTaskCallback
from mtl_fast.methods import registry


class MultiTaskModule(L.LightningModule):
    def __init__(self, method: mf.Weighting, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = SharedEncoderModel()
        self.method = method  # a submodule: its state is saved with the model
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        losses = self.model.task_losses(x, y, self.method)
        for name, loss in zip(TASKS, losses):
            self.log(f"loss/{name}", loss.detach())
        return self.method.loss(losses)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The callback moves the method's parameters into a group of their own.
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="IMTL", choices=registry.names())
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--root", default="lightning_logs_example")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    options = {"extra_pass": False} if "update" in registry.get(args.method).lifecycle else {}
    module = MultiTaskModule(registry.get(args.method).build(len(TASKS), **options))
    loader = DataLoader(TensorDataset(*make_data(args.samples)), batch_size=64, shuffle=True)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        precision=args.precision,
        accumulate_grad_batches=args.accumulate,
        gradient_clip_val=1.0,
        default_root_dir=args.root,
        logger=False,
        enable_progress_bar=False,
        callbacks=[MultiTaskCallback(TASKS, method_lr=1e-2)],
    )
    trainer.fit(module, loader)
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    print(", ".join(f"{k}={v:.4f}" for k, v in sorted(logged.items())))
    return logged


if __name__ == "__main__":
    main()
