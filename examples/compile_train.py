"""The plain training loop under torch.compile: a model whose forward calls ``split``, compiled
with ``fullgraph=True`` (IMTL-G by default), or the whole step (forward, ``method.loss``,
backward, optimizer step) with ``--whole-step``.

The method's step runs as custom operators (docs/compile_and_amp.md): the model compiles into
one graph, nothing recompiles after the first steps, and the weights are those of the eager
loop. The script reports the graph breaks ``torch._dynamo.explain`` finds in the model, the
weights per epoch and the final per-task losses.

    python examples/compile_train.py
    python examples/compile_train.py --method CVWeighting --whole-step --backend aot_eager
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _toy_data import TASKS, SharedEncoderModel, make_data

import mtl_fast as mf
from mtl_fast.methods import registry


class TrainingModel(nn.Module):
    """The example's model with the method inside its forward: x, y -> the T task losses."""

    def __init__(self, net: SharedEncoderModel, method: mf.Weighting) -> None:
        super().__init__()
        self.net = net
        self.method = method

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        zs = self.method.split(self.net.encoder(x), num_tasks=len(TASKS))
        return torch.stack(
            [
                F.mse_loss(head(z).squeeze(-1), y[:, t])
                for t, (head, z) in enumerate(zip(self.net.heads, zs))
            ]
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="IMTLG", choices=registry.names())
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--whole-step", action="store_true", help="compile the whole step")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    options = {"extra_pass": False} if "update" in registry.get(args.method).lifecycle else {}
    method = registry.get(args.method).build(len(TASKS), **options).to(device)
    model = TrainingModel(SharedEncoderModel(), method).to(device)
    optimizer = torch.optim.AdamW([*model.net.parameters(), *method.param_groups()], lr=1e-3)
    # drop_last: one batch shape, so the compiled graph is not specialised a second time.
    loader = DataLoader(
        TensorDataset(*make_data(args.samples)), args.batch_size, shuffle=True, drop_last=True
    )

    x0, y0 = (t.to(device) for t in next(iter(loader)))
    explained = torch._dynamo.explain(model)(x0, y0)
    method.discard_pending()  # explain ran a forward; its split is not back-propagated
    torch._dynamo.reset()
    print(f"graph breaks in the model: {explained.graph_break_count}")

    forward = (
        model if args.whole_step else torch.compile(model, fullgraph=True, backend=args.backend)
    )

    def step(x: Tensor, y: Tensor) -> Tensor:
        losses = forward(x, y)
        total = method.loss(losses)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        return losses.detach()

    if args.whole_step:
        step = torch.compile(step, backend=args.backend)

    losses = torch.zeros(len(TASKS))
    for epoch in range(args.epochs):
        for x, y in loader:
            losses = step(x.to(device), y.to(device))
        method.end_epoch()  # a no-op unless the method's lifecycle lists it
        weights = ", ".join(f"{n}={w:.3f}" for n, w in zip(TASKS, method.weights.tolist()))
        print(f"epoch {epoch}: weights {weights}")
    final = {n: float(v) for n, v in zip(TASKS, losses)}
    print("final losses:", ", ".join(f"{n}={v:.4f}" for n, v in final.items()))
    return {"graph_breaks": explained.graph_break_count, "losses": final}


if __name__ == "__main__":
    main()
