"""The tiny multi-task problem of the integration tests and the plain PyTorch loop they are
compared with.

Three regression tasks on x ∈ R^5 with loss scales 1, 4 and 0.25 (so the weighting matters), a
shared encoder and one linear head per task; 32 samples in 4 batches of 8, never shuffled, so a
framework's run and the plain loop see the same batches in the same order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import mtl_fast as mf

TASKS = ("a", "b", "c")
SCALES = (1.0, 4.0, 0.25)
SAMPLES, BATCH = 32, 8


def data() -> tuple[Tensor, Tensor]:
    """(x [32, 5], y [32, 3]): y_t a noisy linear function of x."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(SAMPLES, 5, generator=gen)
    y = x @ torch.randn(5, 3, generator=gen) / 5**0.5 + 0.1 * torch.randn(SAMPLES, 3, generator=gen)
    return x, y


def loader(batch_size: int = BATCH) -> DataLoader:
    return DataLoader(TensorDataset(*data()), batch_size=batch_size, shuffle=False)


class Net(nn.Module):
    """Encoder 5 → 8 → 6 and three linear heads; the same initial weights whatever the global
    RNG state."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 6))
            self.heads = nn.ModuleList(nn.Linear(6, 1) for _ in TASKS)

    def losses(self, x: Tensor, y: Tensor, method: mf.Weighting) -> list[Tensor]:
        zs = method.split(self.encoder(x), num_tasks=len(TASKS))
        return [
            scale * F.mse_loss(head(z).squeeze(-1).float(), y[:, t])
            for t, (head, z, scale) in enumerate(zip(self.heads, zs, SCALES))
        ]


@torch.no_grad()
def accuracies(net: Net, x: Tensor, y: Tensor) -> list[float]:
    """exp(-MSE_t) ∈ (0, 1] per task: an accuracy-like metric for AMTL and DTP."""
    z = net.encoder(x)
    return [
        float(torch.exp(-F.mse_loss(head(z).squeeze(-1), y[:, t])))
        for t, head in enumerate(net.heads)
    ]


def plain_run(
    method: mf.Weighting,
    epochs: int,
    *,
    accumulate: int = 1,
    clip: float | None = None,
    autocast: Callable[[], ContextManager[Any]] = contextlib.nullcontext,
    lr: float = 0.01,
    method_lr: float = 0.02,
) -> tuple[Net, mf.Weighting]:
    """The loop of docs/design.md with what a trainer adds: SGD with momentum, the method's
    parameters in a group of their own, each micro-batch's total divided by ``accumulate``
    and a step every ``accumulate`` batches (and at the epoch's end), the gradient norm of every
    optimized parameter clipped to ``clip``, the forward under ``autocast()``, ``end_epoch()``
    after each epoch."""
    net = Net()
    own = [p for p in method.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": list(net.parameters())}]
    if own:
        groups.append({"params": own, "lr": method_lr, "weight_decay": 0.0})
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    batches = list(loader())
    for _ in range(epochs):
        opt.zero_grad()
        for i, (x, y) in enumerate(batches):
            with autocast():
                total = method.loss(net.losses(x, y, method))
            (total / accumulate).backward()
            if (i + 1) % accumulate == 0 or i + 1 == len(batches):
                if clip is not None:
                    params = [p for g in opt.param_groups for p in g["params"]]
                    torch.nn.utils.clip_grad_norm_(params, clip)
                opt.step()
                opt.zero_grad()
        method.end_epoch()
    return net, method


def assert_same_state(a: Any, b: Any, *, exact: bool, where: str = "state") -> None:
    """Nested states equal (NaN equal to NaN): exactly (``exact``) or to float32 round-off."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor), where
        tol = 0.0 if exact else 1e-5  # exact, or float32 round-off
        torch.testing.assert_close(
            a, b, rtol=tol, atol=tol / 10, equal_nan=True, msg=lambda m: f"{where}: {m}"
        )
    elif isinstance(a, Mapping):
        assert isinstance(b, Mapping) and set(a) == set(b), where
        for k in a:
            assert_same_state(a[k], b[k], exact=exact, where=f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, exact=exact, where=f"{where}[{i}]")
    elif isinstance(a, float) and not exact:
        assert abs(a - b) <= 1e-6 * max(1.0, abs(a)), where
    else:
        assert a == b, where


def assert_same_run(
    a: tuple[nn.Module, mf.Weighting],
    b: tuple[nn.Module, mf.Weighting],
    *,
    exact: bool = False,
) -> None:
    """Two trained (model, method) pairs agree: parameters, weights, the method's state."""
    assert_same_state(a[0].state_dict(), b[0].state_dict(), exact=exact, where="model")
    assert_same_state(a[1].state_dict(), b[1].state_dict(), exact=exact, where="method")
    assert_same_state(a[1].weights, b[1].weights, exact=exact, where="weights")


def mean_accuracies(net: Net, batches: Sequence[tuple[Tensor, Tensor]]) -> list[float]:
    """The per-task accuracies averaged over equal-sized batches (what an epoch-level metric
    logs)."""
    per_batch = [accuracies(net, x, y) for x, y in batches]
    return [sum(col) / len(col) for col in zip(*per_batch)]
