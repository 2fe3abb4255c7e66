"""mtl_fast under torch.distributed (CPU, gloo), against one process on the whole batch.

Every job spawns its worker processes (``torch.multiprocessing``, a free TCP port, a deadline
on the join) and runs several checks in the same process group to keep the file fast:

* 2 and 3 processes: the weights are identical on every process and equal to one process on
  the concatenated batch, for every method (gradient methods through ``split``, loss-based
  methods, methods with learnable parameters, random orders, accuracies);
* partially labelled batches: a task present on one process only;
* a DDP-wrapped model with IMTL (the method inside and outside the wrapped module), FSDP2
  (``fully_shard``; FSDP1 needs an accelerator), ``mf.backward`` with ``features=`` and the
  exact parameter mode (``params=``);
* deferred statistics updates and ``state_dict()`` on one process only; a checkpoint saved on
  process 0 continued by a fresh 2-process job; ``sync=False`` and ``process_group=``.

The batch of step k is ``toy_batch(model, n=B, seed=k)``; process r of N takes the r-th of N
equal slices. Losses are means over the samples, so the full-batch loss is the mean of the
per-process losses and the full-batch gradient the mean of the per-process gradients.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
from typing import Callable

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _toy import ToyMTL, split_step, toy_batch
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast.distributed import average_gradients
from mtl_fast.methods import registry

pytestmark = pytest.mark.distributed

T = 3
B = 12  # global batch: 6 per process with 2 processes, 4 with 3
STEPS = 3
RTOL, ATOL = 2e-4, 1e-6


# ---------------------------------------------------------------------------- spawning


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, job: Callable, world: int, port: int, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        job(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(job: Callable, world: int, *args, timeout: float = 100.0) -> None:
    """Run ``job(rank, world, *args)`` in ``world`` gloo processes; fail after ``timeout``."""
    ctx = mp.start_processes(
        _entry,
        args=(job, world, _free_port(), args),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job.__name__} did not finish in {timeout} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


# ---------------------------------------------------------------------------- helpers


def _shard(x: Tensor, ys: Tensor, rank: int, world: int) -> tuple[Tensor, Tensor]:
    b = x.shape[0] // world
    return x[rank * b : (rank + 1) * b], ys[:, rank * b : (rank + 1) * b]


def _same_everywhere(t: Tensor, what: str, group=None) -> None:
    """``t`` is bit-identical on every process of ``group``."""
    t = t.detach().to(torch.float64).reshape(-1).clone()
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    for o in out[1:]:
        assert torch.equal(o, out[0]), (what, out)


def _accuracies(rank: int, step: int) -> list[float]:
    return [0.5 + 0.1 * rank + 0.01 * step, 0.6 - 0.05 * rank, 0.7 + 0.02 * step]


def _mean_accuracies(world: int, step: int) -> list[float]:
    per = torch.tensor([_accuracies(r, step) for r in range(world)], dtype=torch.float64)
    return per.mean(0).tolist()


def _feed_accuracies(method: mf.Weighting, step: int, rank: int | None, world: int) -> None:
    """AMTL / DTP: each process its own accuracies; the reference (rank None) their mean."""
    if "observe" in method.lifecycle:
        acc = _mean_accuracies(world, step) if rank is None else _accuracies(rank, step)
        method.observe(acc)


#: name -> factory(rank_or_None, **kwargs). Seeds: process r passes 100 + r, the reference
#: process 0's (the methods take process 0's seed).
METHODS: dict[str, Callable[..., mf.Weighting]] = {
    "IMTLG": lambda r, **kw: mf.IMTLG(T, **kw),
    "IMTL": lambda r, **kw: mf.IMTL(T, **kw),
    "MGDA": lambda r, **kw: mf.MGDA(T, **kw),
    "MGDA-loss": lambda r, **kw: mf.MGDA(T, normalization="loss", **kw),
    "MGDA-l2": lambda r, **kw: mf.MGDA(T, normalization="l2", **kw),
    "GradNorm": lambda r, **kw: mf.GradNorm(T, **kw),
    "CAGrad": lambda r, **kw: mf.CAGrad(T, **kw),
    "PCGrad": lambda r, **kw: mf.PCGrad(T, seed=100 + (r or 0), **kw),
    "GradVac": lambda r, **kw: mf.GradVac(T, seed=100 + (r or 0), **kw),
    "GradDrop": lambda r, **kw: mf.GradDrop(T, seed=100 + (r or 0), **kw),
    "DBMTL": lambda r, **kw: mf.DBMTL(T, **kw),
    "CV": lambda r, **kw: mf.CVWeighting(T, **kw),
    "CV-current": lambda r, **kw: mf.CVWeighting(T, denominator="current", **kw),
    "LSB": lambda r, **kw: mf.LSB(T, period_steps=1, beta=0.5, **kw),
    "AMTL": lambda r, **kw: mf.AMTL([0.9, 0.9, 0.9], **kw),
    "AMTL-sum": lambda r, **kw: mf.AMTL([0.9, 0.9, 0.9], geometric=False, **kw),
    "DTP": lambda r, **kw: mf.DTP(T, **kw),
    "DWA": lambda r, **kw: mf.DWA(T, period_steps=1, **kw),
    "FAMO": lambda r, **kw: mf.FAMO(T, extra_pass=False, **kw),
    "STCH": lambda r, **kw: mf.STCH(T, warmup_epochs=0, epoch_steps=1, **kw),
    "GLS": lambda r, **kw: mf.GLS(T, **kw),
    "RLW": lambda r, **kw: mf.RLW(T, seed=100 + (r or 0), **kw),
    "Uncertainty": lambda r, **kw: mf.UncertaintyWeighting(T, **kw),
    "IMTLL": lambda r, **kw: mf.IMTLL(T, **kw),
    "Static": lambda r, **kw: mf.StaticWeighting([1.0, 2.0, 3.0], normalize=True, **kw),
    "Equal": lambda r, **kw: mf.EqualWeighting(T, **kw),
    "Compose": lambda r, **kw: registry.get("Compose").build(T, **kw),  # IMTL-L ∘ IMTL-G
    # Both parts synchronised: the loss part's deferred statistics, the gradient part's seed.
    "Compose-CV-PCGrad": lambda r, **kw: mf.Compose(
        mf.CVWeighting(T), mf.PCGrad(T, seed=100 + (r or 0)), **kw
    ),
}

#: Every registered method without a variant above joins with its registry defaults, so a method
#: added to ``mtl_fast.methods.registry`` is checked here too.
_COVERED = {type(make(None)).__name__ for make in METHODS.values()}
for _name in registry.names():
    if _name not in _COVERED:
        METHODS[_name] = lambda r, _n=_name, **kw: registry.get(_n).build(T, **kw)

#: the main methods, checked at 3 processes too (the others at 2)
CORE = ("IMTLG", "IMTL", "MGDA", "MGDA-loss", "GradNorm", "CV", "LSB", "AMTL", "DBMTL", "STCH")


def _optimizer(model: nn.Module, method: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD([*model.parameters(), *method.parameters()], lr=0.05)


def _check_against_one_process(rank: int, world: int, names) -> None:
    """Weights of every step: identical on every process, equal to one process on the whole
    batch. The model is trained (SGD) with gradients averaged across processes (the method's
    own parameters by its hooks), so the methods' state evolves as in the reference."""
    for name in names:
        make = METHODS[name]
        model, ref_model = ToyMTL(T), ToyMTL(T)
        method, ref = make(rank), make(None, sync=False)
        opt, ref_opt = _optimizer(model, method), _optimizer(ref_model, ref)
        for k in range(STEPS):
            _feed_accuracies(method, k, rank, world)
            _feed_accuracies(ref, k, None, world)
            x, ys = toy_batch(model, n=B, seed=k)
            opt.zero_grad(set_to_none=True)
            split_step(model, method, *_shard(x, ys, rank, world))
            average_gradients(model.parameters())
            opt.step()
            ref_opt.zero_grad(set_to_none=True)
            split_step(ref_model, ref, x, ys)
            ref_opt.step()
            w = method.weights
            _same_everywhere(w, f"{name} weights at step {k}")
            torch.testing.assert_close(
                w, ref.weights, rtol=RTOL, atol=ATOL, msg=lambda m, n=name, k=k: f"{n} {k}: {m}"
            )
        for p, q in zip(method.parameters(), ref.parameters()):
            _same_everywhere(p, f"{name} parameter")
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)


def _check_partial_labels(rank: int, world: int) -> None:
    """Task 1 is labelled on process 0 only.

    Loss-based methods: task 1's loss value is its mean over process 0's samples (the average
    over the processes that have it). Gradient methods: task 1's gradient is what DDP applies,
    1/N of process 0's (the mean over N processes, 0 elsewhere): the reference is one process
    on the whole batch with task 1's loss = (mean over process 0's samples) / N.
    """
    mask = [True, rank == 0, True]
    for name in ("CV", "LSB", "AMTL", "AMTL-sum", "DWA", "Static", "IMTLG", "MGDA", "CAGrad"):
        make = METHODS[name]
        model, ref_model = ToyMTL(T), ToyMTL(T)
        method, ref = make(rank), make(None, sync=False)
        gradient = method.gradient_based
        for k in range(STEPS):
            _feed_accuracies(method, k, rank, world)
            _feed_accuracies(ref, k, None, world)
            x, ys = toy_batch(model, n=B, seed=k)
            model.zero_grad(set_to_none=True)
            split_step(model, method, *_shard(x, ys, rank, world), mask=mask)
            x0, ys0 = _shard(x, ys, 0, world)
            b = x0.shape[0]
            z = ref_model.encoder(x)
            zs = ref.split(z, num_tasks=T)
            losses = ref_model.task_losses(zs, ys, stack=False)
            z1 = zs[1][:b]
            task1 = ref_model.loss_scales[1] * ((ref_model.heads[1](z1) - ys0[1]) ** 2).mean()
            losses[1] = task1 / world if gradient else task1
            ref.loss(losses).backward()
            w = method.weights
            _same_everywhere(w, f"{name} weights, partial labels, step {k}")
            torch.testing.assert_close(
                w, ref.weights, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}"
            )
            if name == "IMTLG":
                assert w[1] > 0  # labelled on one process: present


class _Net(nn.Module):
    """ToyMTL whose forward runs the method's split and returns the T losses (for DDP)."""

    def __init__(self, method: mf.Weighting, inside: bool) -> None:
        super().__init__()
        self.toy = ToyMTL(T)
        self._methods = [method]  # a plain list: not a submodule
        if inside:
            self.method = method  # a submodule: DDP averages its parameters too

    def forward(self, x: Tensor, ys: Tensor) -> list[Tensor]:
        method = self._methods[0]
        zs = method.split(self.toy.encoder(x), num_tasks=T)
        return self.toy.task_losses(zs, ys, stack=False)


def _check_ddp_imtl(rank: int, world: int) -> None:
    """DDP + IMTL, the method inside and outside the wrapped module: every process's
    parameters identical, equal to one process on the whole batch."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    for inside in (False, True):
        method = mf.IMTL(T)
        net = _Net(method, inside)
        ddp = DDP(net)
        params = list(ddp.parameters()) + ([] if inside else list(method.parameters()))
        opt = torch.optim.SGD(params, lr=0.05)
        ref = mf.IMTL(T, sync=False)
        ref_net = _Net(ref, inside=False)
        ref_opt = torch.optim.SGD([*ref_net.parameters(), *ref.parameters()], lr=0.05)
        for k in range(STEPS):
            x, ys = toy_batch(net.toy, n=B, seed=k)
            opt.zero_grad(set_to_none=True)
            method.loss(ddp(*_shard(x, ys, rank, world))).backward()
            opt.step()
            ref_opt.zero_grad(set_to_none=True)
            ref.loss(ref_net(x, ys)).backward()
            ref_opt.step()
            _same_everywhere(method.weights, f"DDP weights (inside={inside})")
            torch.testing.assert_close(method.weights, ref.weights, rtol=RTOL, atol=ATOL)
            for (name, p), q in zip(net.toy.named_parameters(), ref_net.toy.parameters()):
                _same_everywhere(p, f"DDP {name} (inside={inside})")
                torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL)
            _same_everywhere(method.log_scales, "IMTL s")
            torch.testing.assert_close(method.log_scales, ref.log_scales, rtol=RTOL, atol=ATOL)
        assert not torch.equal(method.log_scales, torch.zeros(T))  # s_t did move


def _check_fsdp(rank: int, world: int) -> None:
    """FSDP2 (``fully_shard``, CPU/gloo; FSDP1 refuses to run without an accelerator): IMTL
    through ``split``, the method outside the sharded modules (its hooks average s_t)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:  # torch 2.4 / 2.5: FSDP2 lives under _composable
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError:  # torch < 2.4: no FSDP2
            return
    from torch.distributed.device_mesh import init_device_mesh

    model = ToyMTL(T)
    ref_model = ToyMTL(T)
    # An explicit CPU mesh: without one, FSDP2 picks CUDA whenever the machine has a GPU and
    # moves the shards there, while the data and the gloo group stay on the CPU.
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(model.encoder, mesh=mesh)
    for head in model.heads:
        fully_shard(head, mesh=mesh)
    method, ref = mf.IMTL(T), mf.IMTL(T, sync=False)
    opt, ref_opt = _optimizer(model, method), _optimizer(ref_model, ref)
    for k in range(STEPS):
        x, ys = toy_batch(ref_model, n=B, seed=k)
        opt.zero_grad(set_to_none=True)
        split_step(model, method, *_shard(x, ys, rank, world))
        opt.step()
        ref_opt.zero_grad(set_to_none=True)
        split_step(ref_model, ref, x, ys)
        ref_opt.step()
        _same_everywhere(method.weights, "FSDP weights")
        torch.testing.assert_close(method.weights, ref.weights, rtol=RTOL, atol=ATOL)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p.full_tensor(), q, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(method.log_scales, ref.log_scales, rtol=RTOL, atol=ATOL)


def _functional_step(model: ToyMTL, method: mf.Weighting, x: Tensor, ys: Tensor, mode: str):
    if mode == "params":
        mf.backward(model.losses(x, ys), method=method, params=model.shared_parameters())
    else:
        z = model.encoder(x)
        losses = model.task_losses([z] * T, ys)
        mf.backward(losses, method=method, features=z)


def _check_functional(rank: int, world: int) -> None:
    """``mf.backward``: with ``params=`` (the exact mode) the T per-task gradients of the shared
    parameters are averaged across processes, so ``.grad`` is identical everywhere and equal to
    the exact mode on the whole batch; with ``features=`` the Gram matrix is all-reduced as in
    ``split``. The other gradients are averaged by ``average_gradients``."""
    makers = {"IMTLG": lambda **kw: mf.IMTLG(T, **kw), "MGDA": lambda **kw: mf.MGDA(T, **kw)}
    for mode in ("params", "features"):
        for name, make in makers.items():
            model, ref_model = ToyMTL(T), ToyMTL(T)
            method, ref = make(), make(sync=False)
            x, ys = toy_batch(model, n=B, seed=7)
            _functional_step(model, method, *_shard(x, ys, rank, world), mode)
            if mode == "params":
                average_gradients(model.head_parameters())
                for p in model.shared_parameters():
                    _same_everywhere(p.grad, f"{name} exact-mode .grad")
            else:
                average_gradients(model.parameters())
            _functional_step(ref_model, ref, x, ys, mode)
            _same_everywhere(method.weights, f"{name} {mode} weights")
            torch.testing.assert_close(method.weights, ref.weights, rtol=RTOL, atol=ATOL)
            for p, q in zip(model.parameters(), ref_model.parameters()):
                torch.testing.assert_close(p.grad, q.grad, rtol=RTOL, atol=ATOL)


def _check_deferred_and_opt_out(rank: int, world: int) -> None:
    """CV's statistics update is deferred (an async collective): in flight between ``loss()``
    and the end of the backward; ``state_dict()`` on process 0 alone waits for it without a new
    collective; ``sync=False`` opts out (each process weighs its own batch)."""
    model = ToyMTL(T)
    method = mf.CVWeighting(T)
    for k in range(2):
        x, ys = toy_batch(model, n=B, seed=k)
        split_step(model, method, *_shard(x, ys, rank, world))
        assert not method._sync.has_pending  # waited for at the end of the backward
    x, ys = toy_batch(model, n=B, seed=2)
    total = method.loss(model.losses(*_shard(x, ys, rank, world)))
    assert len(method._sync._pending) == 1  # this step's update is in flight
    if rank == 0:
        state = method.state_dict()  # alone: must not hang
        assert not method._sync.has_pending
    dist.barrier()
    if rank != 0:
        state = method.state_dict()
    total.backward()
    mean, var, count = method.statistics.snapshot(torch.device("cpu"))
    assert count.tolist() == [3] * (2 * T)
    _same_everywhere(torch.cat([mean, var]), "CV statistics")
    assert "_extra_state" in state

    local = mf.IMTLG(T, sync=False)
    alone = mf.IMTLG(T, sync=False)
    x, ys = toy_batch(model, n=B, seed=3)
    xr, ysr = _shard(x, ys, rank, world)
    split_step(ToyMTL(T), local, xr, ysr)
    split_step(ToyMTL(T), alone, xr, ysr)
    assert torch.equal(local.weights, alone.weights)
    gathered = [torch.empty(T) for _ in range(world)]
    dist.all_gather(gathered, local.weights.float())
    assert not torch.equal(gathered[0], gathered[1])  # different batches, no sync


def _check_group(rank: int, world: int) -> None:
    """``process_group=``: processes 0 and 1 synchronise over their own group and get the
    weights of one process on their two slices; process 2 is not in it."""
    group = dist.new_group([0, 1])
    if rank == 2:
        return
    for name in ("IMTLG", "CV", "LSB"):
        model, ref_model = ToyMTL(T), ToyMTL(T)
        method, ref = METHODS[name](rank, process_group=group), METHODS[name](None, sync=False)
        for k in range(STEPS):
            x, ys = toy_batch(model, n=B, seed=k)
            b = B // world
            xr, ysr = _shard(x, ys, rank, world)
            split_step(model, method, xr, ysr)
            split_step(ref_model, ref, x[: 2 * b], ys[:, : 2 * b])
            _same_everywhere(method.weights, f"{name} over the group", group=group)
            torch.testing.assert_close(method.weights, ref.weights, rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------------------- checkpoint

CKPT_METHODS = ("CV", "LSB", "IMTL", "AMTL", "Compose-CV-PCGrad")
CKPT_AT, CKPT_MORE = 2, 2


def _ckpt_step(model, method, opt, k: int, rank: int, world: int) -> None:
    _feed_accuracies(method, k, rank, world)
    x, ys = toy_batch(model, n=B, seed=k)
    opt.zero_grad(set_to_none=True)
    split_step(model, method, *_shard(x, ys, rank, world))
    average_gradients(model.parameters())
    opt.step()


def _checkpoint_first_job(rank: int, world: int, folder: str) -> None:
    """Train CKPT_AT steps, save on process 0 only, go on CKPT_MORE steps (the unbroken run,
    whose weights process 0 writes down); then the other checks of this job."""
    expected = {}
    for name in CKPT_METHODS:
        model, method = ToyMTL(T), METHODS[name](rank)
        opt = _optimizer(model, method)
        for k in range(CKPT_AT):
            _ckpt_step(model, method, opt, k, rank, world)
        if rank == 0:
            ckpt = {"model": model.state_dict(), "method": method.state_dict()}
            ckpt["opt"] = opt.state_dict()
            torch.save(ckpt, os.path.join(folder, f"{name}.pt"))
        weights = []
        for k in range(CKPT_AT, CKPT_AT + CKPT_MORE):
            _ckpt_step(model, method, opt, k, rank, world)
            weights.append(method.weights.clone())
        expected[name] = weights
    if rank == 0:
        torch.save(expected, os.path.join(folder, "expected.pt"))

    _check_against_one_process(rank, world, METHODS)
    _check_partial_labels(rank, world)
    _check_ddp_imtl(rank, world)
    _check_fsdp(rank, world)
    _check_functional(rank, world)
    _check_deferred_and_opt_out(rank, world)


def _checkpoint_second_job(rank: int, world: int, folder: str) -> None:
    """A fresh job loads process 0's checkpoint on every process and continues: the same
    weights as the unbroken run."""
    expected = torch.load(os.path.join(folder, "expected.pt"), weights_only=False)
    for name in CKPT_METHODS:
        ckpt = torch.load(os.path.join(folder, f"{name}.pt"), weights_only=False)
        model, method = ToyMTL(T, seed=5), METHODS[name](rank)
        opt = _optimizer(model, method)
        model.load_state_dict(ckpt["model"])
        method.load_state_dict(ckpt["method"])
        opt.load_state_dict(ckpt["opt"])
        for i, k in enumerate(range(CKPT_AT, CKPT_AT + CKPT_MORE)):
            _ckpt_step(model, method, opt, k, rank, world)
            _same_everywhere(method.weights, f"{name} resumed")
            torch.testing.assert_close(method.weights, expected[name][i], rtol=0, atol=0)


def _three_process_job(rank: int, world: int) -> None:
    _check_against_one_process(rank, world, CORE)
    _check_partial_labels(rank, world)
    _check_group(rank, world)


# ---------------------------------------------------------------------------- tests


def test_two_processes_and_checkpoint(tmp_path):
    """2 processes: every method against one process, partial labels, DDP, FSDP2, the exact
    mode, deferred updates, opt-out; a checkpoint continued by a fresh 2-process job."""
    _spawn(_checkpoint_first_job, 2, str(tmp_path))
    _spawn(_checkpoint_second_job, 2, str(tmp_path), timeout=60)


def test_three_processes():
    """3 processes: the core methods against one process, a task labelled on one process of
    three, a process group of two."""
    _spawn(_three_process_job, 3)
