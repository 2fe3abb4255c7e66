"""Multi-task training under DistributedDataParallel: every process gets the same task weights.

A shared MLP encoder and T regression heads on synthetic data with very different loss scales,
trained with DDP. Each process takes its own slice of every global batch; mtl_fast
synchronises on its own (``sync`` is on by default once ``torch.distributed`` is initialised):

* gradient methods (IMTL-G, IMTL, MGDA, ...): ``split``'s backward all-reduces the T×T Gram
  matrix (T² numbers), so every process solves for the same α, the α of one process on the
  whole global batch; DDP then averages the parameter gradients as usual;
* loss-based methods (CV-Weighting, LSB, ...): statistics are updated from the losses averaged
  across processes (2T numbers), so every process holds the same state;
* IMTL's learnable s_t: the method is kept outside the DDP-wrapped model here, and its own
  hooks average their gradients (putting it inside the wrapped model works too).

At the end the script gathers every process's weights and checks that they agree.

    torchrun --nproc_per_node=2 examples/ddp_train.py                  # gloo on CPU
    torchrun --nproc_per_node=2 examples/ddp_train.py --method CVWeighting --steps 8
    torchrun --nproc_per_node=4 examples/ddp_train.py                  # NCCL with 4 GPUs

NCCL (one GPU per process) is used when CUDA is available, gloo on the CPU otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

import mtl_fast as mf

METHODS = {
    "IMTL": lambda T: mf.IMTL(T),
    "IMTLG": lambda T: mf.IMTLG(T),
    "MGDA": lambda T: mf.MGDA(T, normalization="loss"),
    "GradNorm": lambda T: mf.GradNorm(T),
    "CVWeighting": lambda T: mf.CVWeighting(T),
    "LSB": lambda T: mf.LSB(T, period_steps=2),
    "UncertaintyWeighting": lambda T: mf.UncertaintyWeighting(T),
}


class MultiTaskNet(nn.Module):
    """Encoder + T heads; ``forward`` runs the method's ``split`` and returns the T losses."""

    def __init__(self, method: mf.Weighting, num_tasks: int, in_dim: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(in_dim, 64), nn.ReLU(), nn.Linear(64, 32))
        self.heads = nn.ModuleList(nn.Linear(32, 1) for _ in range(num_tasks))
        self._method = [method]  # a plain list: the method is not a submodule of the DDP model
        self.scales = [10.0**t for t in range(num_tasks)]  # loss scales 1, 10, 100, ...

    def forward(self, x: Tensor, y: Tensor) -> list[Tensor]:
        method = self._method[0]
        zs = method.split(self.encoder(x), num_tasks=len(self.heads))
        return [
            self.scales[t] * nn.functional.mse_loss(head(zs[t]).squeeze(1), y[:, t])
            for t, head in enumerate(self.heads)
        ]


def global_batch(step: int, n: int, num_tasks: int, in_dim: int) -> tuple[Tensor, Tensor]:
    """The same global batch on every process (seeded by the step)."""
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(n, in_dim, generator=gen)
    w = torch.randn(in_dim, num_tasks, generator=gen)
    y = torch.tanh(x @ w) + 0.1 * torch.randn(n, num_tasks, generator=gen)
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHODS), default="IMTL")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32, help="global batch size")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(1)
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} must be divisible by the {world} processes")

    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    method = METHODS[args.method](args.tasks).to(device)
    model = MultiTaskNet(method, args.tasks).to(device)
    ddp = DDP(model, device_ids=[device.index] if cuda else None)
    optimizer = torch.optim.Adam([*ddp.parameters(), *method.parameters()], lr=1e-3)

    b = args.batch // world
    for step in range(args.steps):
        x, y = global_batch(step, args.batch, args.tasks, 16)
        x, y = x[rank * b : (rank + 1) * b].to(device), y[rank * b : (rank + 1) * b].to(device)
        optimizer.zero_grad(set_to_none=True)
        losses = ddp(x, y)
        method.loss(losses).backward()  # one backward: Gram all-reduce + DDP's buckets
        optimizer.step()
        w = method.weights.float().cpu()
        line = f"[rank {rank}] step {step}: weights {[round(v, 5) for v in w.tolist()]}\n"
        sys.stdout.write(line)  # one write per line: the processes' lines do not interleave
        sys.stdout.flush()

    mine = method.weights.float().reshape(-1)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    agree = all(torch.equal(g, gathered[0]) for g in gathered)
    if rank == 0:
        print(f"{args.method}: weights {'agree' if agree else 'DIFFER'} on all {world} processes")
    # Free DDP before the process group: with gloo, the group's last reference going with the
    # DDP model can deadlock (docs/recipes/distributed.md, "Free the DDP model first").
    del ddp, optimizer, model
    dist.destroy_process_group()
    if not agree:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
