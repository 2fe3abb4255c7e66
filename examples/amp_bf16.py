"""The plain training loop with mixed precision: bf16 autocast (CPU or GPU), IMTL by default.

The forward runs under ``torch.autocast``; the features that ``split`` receives are bf16 and the
Gram matrix of their gradients is accumulated in fp32 (docs/design.md, "Numerics"); the losses
handed to ``method.loss`` are fp32 (``mse_loss`` autocasts to fp32). bf16 needs no gradient
scaler. The script prints the weights per epoch and the final per-task losses.

    python examples/amp_bf16.py
    python examples/amp_bf16.py --method MGDA --epochs 5
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _toy_data import TASKS, SharedEncoderModel, make_data

from mtl_fast.methods import registry


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="IMTL", choices=registry.names())
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SharedEncoderModel().to(device)
    method = registry.get(args.method).build(len(TASKS)).to(device)
    if "update" in type(method).lifecycle:
        method = registry.get(args.method).build(len(TASKS), extra_pass=False).to(device)
    params = [{"params": model.parameters()}]
    if list(method.parameters()):
        params.append({"params": method.parameters(), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loader = DataLoader(TensorDataset(*make_data(args.samples)), args.batch_size, shuffle=True)

    for epoch in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with torch.autocast(device, dtype=torch.bfloat16):
                losses = model.task_losses(x, y, method)
                total = method.loss(losses)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
        method.end_epoch()  # a no-op unless the method's lifecycle lists it
        weights = ", ".join(f"{n}={w:.3f}" for n, w in zip(TASKS, method.weights.tolist()))
        print(f"epoch {epoch}: weights {weights}")
    final = {n: float(v) for n, v in zip(TASKS, losses)}
    print("final losses:", ", ".join(f"{n}={v:.4f}" for n, v in final.items()))
    return final


if __name__ == "__main__":
    main()
