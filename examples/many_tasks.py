"""1,000 binary tasks on one linear head, balanced by IMTL-G, against equal weighting.

A multi-label model on synthetic data: x ∈ R^64 → shared MLP encoder → z ∈ R^C →
``MultiTaskLinear(C, T)``: one logit per task, binary cross-entropy per task. The labels of the
T tasks come from a low-rank teacher (related tasks) and have base rates spread from 2% to 50%,
so the raw per-task gradients differ a lot in size — what gradient balancing is for.

With ``mf.MultiTaskLinear`` the gradient method never sees the T×B×C Jacobian of the head: the
backward forms the task Gram matrix G = (ΔᵀΔ) ∘ (W Wᵀ) from the logits' gradient Δ [B, T] and the
head's weight W [T, C], solves for α and returns (Δ diag α) W as the features' gradient. The
script trains the same initial model twice — IMTL-G and equal weighting — and prints the time
per step of each (median after warm-up) and the held-out loss.

    python examples/many_tasks.py                      # T = 1000, 30 steps: well under a minute
    python examples/many_tasks.py --tasks 200 --steps 100 --method MGDA
    python examples/many_tasks.py --jacobian-steps 2   # also time the split + T heads route
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast.multitask_linear import MultiTaskLinear


def make_data(n: int, num_tasks: int, in_features: int, gen: torch.Generator):
    """(x [n, in], y [n, T] in {0, 1}) from a rank-16 teacher with per-task base rates."""
    rank = 16
    basis = torch.randn(in_features, rank, generator=gen) / in_features**0.5
    mix = torch.randn(rank, num_tasks, generator=gen)
    rates = torch.linspace(0.02, 0.5, num_tasks)[torch.randperm(num_tasks, generator=gen)]
    x = torch.randn(n, in_features, generator=gen)
    score = torch.tanh(x @ basis) @ mix + 0.3 * torch.randn(n, num_tasks, generator=gen)
    threshold = torch.quantile(score, 1 - rates, dim=0).diagonal()
    return x, (score > threshold).float()


class Model(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_tasks: int, method: mf.Weighting):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = MultiTaskLinear(hidden, num_tasks, method=method)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def task_losses(logits: Tensor, y: Tensor) -> Tensor:
    """Per-task mean BCE, [T]."""
    return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0)


def method_class(name: str) -> type:
    """The :class:`mtl_fast.Weighting` subclass ``name`` (exported by ``mtl_fast`` or defined in
    one of the modules of ``mtl_fast.methods``)."""
    import importlib
    import pkgutil

    import mtl_fast.methods

    cls = getattr(mf, name, None) or getattr(mtl_fast.methods, name, None)
    if cls is None:
        for info in pkgutil.iter_modules(mtl_fast.methods.__path__):
            cls = getattr(importlib.import_module(f"mtl_fast.methods.{info.name}"), name, None)
            if cls is not None:
                break
    if not (isinstance(cls, type) and issubclass(cls, mf.Weighting)):
        raise SystemExit(f"unknown method {name!r}")
    return cls


def train(method_name: str, args, data, init_state) -> tuple[list[float], float, Tensor]:
    """Train one model; (seconds per step, held-out mean loss, last weights)."""
    x, y, x_test, y_test = data
    T = args.tasks
    method = method_class(method_name)(T)
    model = Model(x.shape[1], args.hidden, T, method)
    model.load_state_dict(init_state)
    opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 2)
    times = []
    for _ in range(args.steps):
        idx = torch.randint(0, x.shape[0], (args.batch,), generator=gen)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = method.loss(task_losses(model(x[idx]), y[idx]))
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    with torch.no_grad():
        test = task_losses(model(x_test), y_test).mean().item()
    return times, test, method.weights


def time_jacobian_route(args, data, init_state) -> list[float]:
    """Seconds per step of the Jacobian route: ``split`` + T one-row linear heads (IMTL-G)."""
    x, y, _, _ = data
    T = args.tasks
    method = mf.IMTLG(T)
    model = Model(x.shape[1], args.hidden, T, mf.EqualWeighting(T))
    model.load_state_dict(init_state)
    W, b = model.head.weight, model.head.bias
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    times = []
    for _ in range(args.jacobian_steps + 1):
        idx = torch.randint(0, x.shape[0], (args.batch,))
        t0 = time.perf_counter()
        opt.zero_grad()
        zs = method.split(model.encoder(x[idx]), num_tasks=T)
        logits = torch.cat([F.linear(zs[t], W[t : t + 1], b[t : t + 1]) for t in range(T)], 1)
        method.loss(task_losses(logits, y[idx])).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[1:]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=1000, help="number of binary tasks T")
    p.add_argument("--steps", type=int, default=30, help="training steps per method")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256, help="feature width C")
    p.add_argument("--in-features", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--method", default="IMTLG", help="gradient method (IMTLG, MGDA, ...)")
    p.add_argument("--jacobian-steps", type=int, default=0, help="also time the Jacobian route")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the matrices are small, and one thread keeps the timings "
        "stable on a shared machine; 0 keeps PyTorch's default)",
    )
    args = p.parse_args(argv)
    if args.steps < 1 or args.tasks < 1:
        p.error("--steps and --tasks must be positive")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    gen = torch.Generator().manual_seed(args.seed)
    x, y = make_data(20_000, args.tasks, args.in_features, gen)
    x_test, y_test = make_data(2_000, args.tasks, args.in_features, gen)
    data = (x, y, x_test, y_test)
    torch.manual_seed(args.seed + 1)
    init_state = Model(args.in_features, args.hidden, args.tasks, mf.EqualWeighting()).state_dict()

    print(
        f"T={args.tasks} binary tasks, B={args.batch}, C={args.hidden}, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    results = {}
    for name in (args.method, "EqualWeighting"):
        times, test, weights = train(name, args, data, init_state)
        steady = times[1:] if len(times) > 1 else times
        results[name] = statistics.median(steady)
        w = weights.float()
        print(
            f"{name:>14}: {results[name] * 1e3:8.1f} ms/step (median)   held-out BCE {test:.4f}"
            f"   weights min/max {w.min().item():.3g}/{w.max().item():.3g}"
        )
    ratio = results[args.method] / results["EqualWeighting"]
    print(f"{args.method} step / equal-weighting step: {ratio:.2f}×")
    if args.jacobian_steps > 0:
        jt = statistics.median(time_jacobian_route(args, data, init_state))
        print(
            f"Jacobian route (split + {args.tasks} heads, IMTL-G): {jt * 1e3:.1f} ms/step — "
            f"{jt / results[args.method]:.1f}× the structured head"
        )


if __name__ == "__main__":
    main()
