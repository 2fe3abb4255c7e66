"""A tiny multi-task model, data and training loops shared by the method tests.

``ToyMTL``: a shared MLP encoder z = encoder(x) and T small heads; task t's loss is a mean
squared error multiplied by ``loss_scales[t]`` (so the tasks have different loss and gradient
scales). Everything is seeded: two models built with the same seed are identical.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

DEFAULT_SCALES = (1.0, 10.0, 0.1, 3.0, 0.3, 30.0)


class ToyMTL(nn.Module):
    def __init__(
        self,
        num_tasks: int = 3,
        in_dim: int = 5,
        hidden: int = 8,
        feat: int = 6,
        out_dim: int = 2,
        seed: int = 0,
        loss_scales: Sequence[float] | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_tasks = num_tasks
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.encoder = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, feat))
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(feat, 4), nn.Tanh(), nn.Linear(4, out_dim))
            for _ in range(num_tasks)
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
        if loss_scales is None:
            loss_scales = [DEFAULT_SCALES[t % len(DEFAULT_SCALES)] for t in range(num_tasks)]
        self.loss_scales = list(loss_scales)
        self.to(device=device, dtype=dtype)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def task_losses(self, zs: Sequence[Tensor], ys: Tensor, stack: bool = True):
        """[T] losses from per-task features ``zs`` (T views, or the same z T times); a list of
        T scalars with ``stack=False`` (what keeps an absent task's head out of the graph)."""
        out = []
        for t, head in enumerate(self.heads):
            pred = head(zs[t])
            out.append(self.loss_scales[t] * ((pred - ys[t]) ** 2).mean())
        return torch.stack(out) if stack else out

    def losses(self, x: Tensor, ys: Tensor) -> Tensor:
        z = self.encoder(x)
        return self.task_losses([z] * self.num_tasks, ys)


def toy_batch(
    model: ToyMTL, n: int = 16, seed: int = 0, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """(x [n, in_dim], ys [T, n, out_dim]) from a seeded generator."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(n, model.in_dim, generator=gen)
    ys = torch.randn(model.num_tasks, n, model.out_dim, generator=gen)
    dtype = next(model.parameters()).dtype
    return x.to(device=device, dtype=dtype), ys.to(device=device, dtype=dtype)


def split_step(model: ToyMTL, method, x: Tensor, ys: Tensor, mask=None) -> tuple[Tensor, Tensor]:
    """One forward + backward through ``method.split``; returns (losses, total) detached. The
    losses are passed as a list (absent tasks stay out of the graph)."""
    z = model.encoder(x)
    zs = method.split(z, num_tasks=model.num_tasks)
    losses = model.task_losses(zs, ys, stack=False)
    total = method.loss(losses, mask)
    total.backward()
    return torch.stack([v.detach() for v in losses]), total.detach()


def feature_gradients(model: ToyMTL, x: Tensor, ys: Tensor, scales: Tensor | None = None):
    """(z, J [T, n, feat], head grads of Σ c_t L_t) computed the slow, obvious way."""
    z = model.encoder(x)
    zd = z.detach().requires_grad_(True)
    losses = model.task_losses([zd] * model.num_tasks, ys)
    c = torch.ones(model.num_tasks) if scales is None else scales.detach().cpu()
    J = torch.stack(
        [
            torch.autograd.grad(c[t].item() * losses[t], zd, retain_graph=True)[0]
            for t in range(model.num_tasks)
        ]
    )
    return z, J


def make_optimizer(model: nn.Module, method: nn.Module) -> torch.optim.Optimizer:
    params = list(model.parameters()) + list(method.parameters())
    return torch.optim.Adam(params, lr=0.01)


def train(
    model: ToyMTL,
    method,
    opt: torch.optim.Optimizer,
    steps: range,
    masks: Callable[[int], object] | None = None,
    step_fn: Callable | None = None,
) -> list[Tensor]:
    """Run the given steps (the batch of step k is ``toy_batch(model, seed=k)``); returns the
    weights after each step."""
    history = []
    for k in steps:
        x, ys = toy_batch(model, seed=k, device=next(model.parameters()).device)
        mask = None if masks is None else masks(k)
        opt.zero_grad(set_to_none=True)
        if step_fn is None:
            split_step(model, method, x, ys, mask)
        else:
            step_fn(model, method, x, ys, mask)
        opt.step()
        history.append(method.weights.detach().clone())
    return history


def check_resume(
    make_method: Callable[[], nn.Module],
    num_tasks: int = 3,
    steps: int = 5,
    split_at: int = 2,
    masks: Callable[[int], object] | None = None,
    step_fn: Callable | None = None,
    device: torch.device | str = "cpu",
    weights_only: bool = False,
) -> None:
    """A run resumed from state_dicts after ``split_at`` steps equals an unbroken run exactly
    (weights of every step, model, method and optimizer parameters); ``weights_only``: the
    checkpoint is read back with ``torch.load(weights_only=True)``."""
    torch.manual_seed(0)
    model_a = ToyMTL(num_tasks, device=device)
    method_a = make_method().to(device)
    opt_a = make_optimizer(model_a, method_a)
    hist_a = train(model_a, method_a, opt_a, range(steps), masks, step_fn)

    torch.manual_seed(0)
    model_b = ToyMTL(num_tasks, device=device)
    method_b = make_method().to(device)
    opt_b = make_optimizer(model_b, method_b)
    hist_b = train(model_b, method_b, opt_b, range(split_at), masks, step_fn)
    buf = io.BytesIO()
    torch.save(
        {"model": model_b.state_dict(), "method": method_b.state_dict(), "opt": opt_b.state_dict()},
        buf,
    )
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=weights_only)

    torch.manual_seed(1234)  # a different global RNG state: nothing may depend on it
    model_c = ToyMTL(num_tasks, seed=99, device=device)
    method_c = make_method().to(device)
    opt_c = make_optimizer(model_c, method_c)
    model_c.load_state_dict(ckpt["model"])
    method_c.load_state_dict(ckpt["method"])
    opt_c.load_state_dict(ckpt["opt"])
    hist_c = train(model_c, method_c, opt_c, range(split_at, steps), masks, step_fn)

    for k, (wa, wb) in enumerate(zip(hist_a, hist_b + hist_c)):
        assert torch.equal(wa, wb), f"weights differ at step {k}: {wa} vs {wb}"
    for (name, pa), pc in zip(model_a.named_parameters(), model_c.parameters()):
        assert torch.equal(pa, pc), f"model parameter {name} differs"
    for (name, pa), pc in zip(method_a.named_parameters(), method_c.parameters()):
        assert torch.equal(pa, pc), f"method parameter {name} differs"
    assert method_a.step == method_c.step


def check_mask_and_nan(make_method: Callable[..., nn.Module], num_tasks: int = 3) -> nn.Module:
    """The shared partial-labelling / NaN checks, through ``split``:

    * a NaN loss without a mask raises ``ValueError`` naming the task;
    * ``mask`` (and a NaN loss under a mask) marks the task absent: weight 0, no gradient to its
      head, finite shared gradients;
    * ``nonfinite="absent"`` turns a NaN loss into an absent task silently.

    Returns the method after the masked step.
    """
    import pytest

    model = ToyMTL(num_tasks)
    x, ys = toy_batch(model)
    ys_nan = ys.clone()
    ys_nan[1, 0, 0] = float("nan")

    method = make_method()
    with pytest.raises(ValueError, match="task 1"):
        split_step(model, method, x, ys_nan)
    method.discard_pending()

    for mask in ([True, False] + [True] * (num_tasks - 2), None):
        model.zero_grad(set_to_none=True)
        m = make_method() if mask is not None else make_method(nonfinite="absent")
        split_step(model, m, x, ys_nan, mask=mask)
        w = m.weights
        assert w[1] == 0, w
        assert torch.isfinite(w).all(), w
        assert all(p.grad is None for p in model.heads[1].parameters())
        assert all(p.grad is not None for p in model.heads[0].parameters())
        assert all(torch.isfinite(p.grad).all() for p in model.encoder.parameters())
    return m
