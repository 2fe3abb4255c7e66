r"""``torch.distributed`` support: every process computes the same task weights.

Synchronisation is on when ``torch.distributed`` is initialised with more than one process in
the method's group, unless the method was built with ``sync=False``; ``process_group=`` selects
the group (default: the world). Every process of the group must run the same steps (``loss``,
the backward, ``update_accuracy``, ``end_period``/``end_epoch``): the collectives are issued at
fixed points of the program, whatever the data (a mask never changes which collectives run).

Convention: N processes of equal batch size with mean-reduced losses, which is what
``DistributedDataParallel`` (and FSDP) assume when they average gradients. Then the full-batch
loss is the mean of the per-process losses and the full-batch gradient the mean of the
per-process gradients, and every method gives the weights of ONE process on the concatenated
batch (tests/test_distributed.py checks this for every method at 2 and 3 processes).

* **Feature gradients** (``split``, ``MultiTaskLinear``, ``mf.backward(features=)``). Samples
  are disjoint coordinates of the global feature vector, so the global task gradient is
  g_t = (1/N)·[g_t^(1); …; g_t^(N)] and its Gram matrix is G = (1/N²) Σ_r G_r: one all-reduce of
  the (upper triangle of the) T×T matrices, :func:`reduce_gram`, before the solve. The 1/N²
  makes G the full-batch Gram matrix itself, not a multiple, so the scale-sensitive methods
  (GradNorm's norms and its weights' gradient, DB-MTL's norm EMA) match too; IMTL-G, MGDA,
  CAGrad, PCGrad and GradVac are invariant to the scale of G. The same collective carries which
  tasks are present (and which have a non-finite gradient) on any process and, for the solves
  that need them (MGDA's "loss" normalisations, GradNorm's loss ratios), the loss values. The
  combine Σ_t α_t g_t^(r) stays local: DDP's usual all-reduce of the parameter gradients is
  unchanged and averages it into Σ_t α_t g_t.
* **Partially labelled batches.** A task present on k of the N processes has the gradient DDP
  applies, g_t = (1/N)·[g_t^(r) where present, 0 elsewhere] (k/N of the gradient of its mean over
  the processes that have it), so the weights are solved for the gradients the update is
  actually made of (IMTL-G's equal projections and MGDA's minimum norm hold for the applied
  update). Loss *values* (statistics, normalisations) are averaged over the processes where the
  task is present: the task's loss over the samples labelled for it.
* **Shared parameters** (the exact mode, ``mf.backward(params=)``). The per-task gradient of the
  global batch is the *average* of the per-process gradients, g_t = (1/N) Σ_r g_t^(r), so
  G = (Σ_r J_r)(Σ_r J_r)ᵀ/N² ≠ Σ_r J_r J_rᵀ (the sum of the per-process Gram matrices lacks the
  cross terms between processes: it would be wrong). The exact mode therefore all-reduces the T
  per-task parameter gradients (T·P numbers, :func:`all_reduce_mean_many_`, T times what DDP
  sends for those parameters) and forms G from their averages; every process writes the same
  Σ_t α_t g_t into ``.grad``. Those ``.grad`` are written directly, so DDP must not manage the
  shared parameters in this mode; average the other leaves (heads) with
  :func:`average_gradients` or DDP on a module without the shared parameters.
* **Loss statistics** (CV-Weighting's Welford statistics, LSB/DWA period averages, STCH's
  reference, FAMO's log-losses, GradNorm's initial losses): updated from the losses averaged
  across processes (:func:`average_present`, through ``Weighting._synced_losses``), so every
  process holds identical state and any process's ``state_dict()`` is complete.
* **Totals that are not linear in the losses** (GLS, AMTL's geometric mean, STCH, DB-MTL's
  log-losses): a process's own f(L_r) would give DDP the mean of the per-process gradients of f,
  not the gradient of f at the full-batch losses. Under synchronisation these methods evaluate
  f at the averaged losses L̄ and back-propagate its first-order expansion
  f(L̄) + Σ_t ∂f/∂L_t(L̄)·(L_t − L̄_t) (``Weighting._linearised_total``): exact after DDP's mean.
* **Accuracies** (AMTL, DTP): ``update_accuracy`` averages them across the processes, each task
  over those that evaluated it (call it on every process, with its shard's accuracies or the
  same global values).
* **Learnable parameters of a method** (IMTL/IMTL-L's s_t, the uncertainty log-variances): their
  gradients are averaged across processes by a post-accumulate-grad hook
  (``Weighting._average_parameter_grad``). Averaging is idempotent, so a method that is also a
  submodule of the DDP-wrapped model (DDP averages it again) is equally correct. GradNorm's
  weights get their gradient from the global G and losses (identical everywhere, no
  collective); it is written directly, not by autograd, so keep GradNorm outside the
  DDP-wrapped module. FAMO's logits are state, updated from averaged losses.
* **Random methods** (PCGrad, GradVac, RLW): every process takes process 0's seed at the first
  step (one int64).

Communication per training step, in bytes (T tasks, P shared parameters):

* gradient methods (``split``, ``MultiTaskLinear``, ``features=``): one all-reduce of
  4·(T(T+1)/2 + 2T) (float32), + 4T when the solve needs the losses (MGDA "loss"/"loss+",
  GradNorm);
* loss values and presence (CV-Weighting, LSB, DWA, AMTL, RLW, normalised static weights, FAMO,
  STCH, GLS, DB-MTL): one all-reduce of 16T (2T float64) per ``loss()``; FAMO's ``update()``
  another 16T;
* the method's own parameters (IMTL, IMTL-L, uncertainty weighting): 4T per backward;
* the exact parameter mode (``params=``): 4·T·P (the T per-task gradients, float32) + 16T;
* ``update_accuracy`` (AMTL, DTP): 16T per call; the seeds of PCGrad, GradVac, RLW: 8, once.

Equal weighting, unnormalised static weights, DTP, uncertainty weighting and IMTL-L send
nothing in the forward (their weights depend on no other process); their ``weights`` shows 0 for
a task absent on this process.

Host synchronisation: none added. With NCCL a collective is enqueued on the stream and its
result is consumed by stream order (``work.wait()`` makes the current stream wait); with gloo a
collective is a CPU operation. Where a result is only read at a later step (the statistics of
CV-Weighting with ``denominator="mean"``, LSB and DWA, and the presence-only collective of
AMTL/RLW/static weights), the collective is started with ``async_op=True`` and its update is
applied, in order, at the end of that step's backward (an autograd callback) or earlier at the
next use of the state (the next ``loss()``, ``state_dict()``, ``end_period()``, the statistics
accessors); waiting never issues a collective, so ``state_dict()`` on process 0 alone is safe,
and nothing is in flight once a step's backward has ended. When a task is absent on a process,
the weights of the step need the presence of every process and the collective is waited for at
once (on CUDA tensors always: a stream wait, not a host one).

FSDP: FSDP2 (``fully_shard``) works like DDP (``split`` acts on activations, not on the sharded
parameters; tested on CPU/gloo); keep the method outside the sharded modules (its few
parameters are averaged by its hooks). FSDP1 (``FullyShardedDataParallel``) refuses to run
without an accelerator; on GPUs it is used the same way (not covered by the CPU tests). The
exact parameter mode does not support sharded parameters.

Caveats: a non-finite loss raises ``ValueError`` (``nonfinite="raise"``) on the process that
has it only, and the others then wait in their next collective (as with any exception under
DDP); use a mask or ``nonfinite="absent"`` to keep going. A non-finite *gradient* is reported
on every process at once (it travels with the Gram matrix). If the program issues other
collectives at points that differ between processes, give mtl_fast its own group
(``process_group=dist.new_group()``).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "PendingAverage",
    "all_reduce_mean_",
    "all_reduce_mean_many_",
    "all_reduce_sum",
    "average_gradients",
    "average_present",
    "is_active",
    "reduce_gram",
    "seed_from_rank0",
    "start_average_present",
    "world_size",
]

#: The type of ``process_group=`` (a ``torch.distributed.ProcessGroup`` or ``None``: the world).
ProcessGroup = Any


def is_active(sync: bool | None, group: ProcessGroup = None) -> bool:
    """Whether a method with this ``sync`` setting synchronises across processes now.

    ``sync=False``: never. ``None``: when ``torch.distributed`` is initialised and ``group``
    has more than one process. ``True``: the same, but raises ``RuntimeError`` when
    ``torch.distributed`` is not initialised.
    """
    if sync is False:
        return False
    if not (dist.is_available() and dist.is_initialized()):
        if sync is True:
            raise RuntimeError("sync=True but torch.distributed is not initialised")
        return False
    return dist.get_world_size(group) > 1


def world_size(group: ProcessGroup = None) -> int:
    """Number of processes in ``group`` (1 when ``torch.distributed`` is not initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _comm_device(t: Tensor, group: ProcessGroup) -> torch.device:
    """Where a collective on ``t`` can run: ``t``'s device, except CPU tensors on a group
    without a CPU backend (NCCL only), which go to the current CUDA device."""
    if t.device.type != "cpu":
        return t.device
    backend = str(dist.get_backend(group)).lower()
    if "nccl" in backend and "gloo" not in backend and "cpu" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(t: Tensor, group: ProcessGroup = None) -> Tensor:
    """Sum of ``t`` over the processes of ``group`` (a new tensor on ``t``'s device; ``t`` is
    left unchanged)."""
    out = t.detach().clone().to(_comm_device(t, group))
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out.to(t.device)


def all_reduce_mean_(t: Tensor, group: ProcessGroup = None) -> Tensor:
    """Replace ``t`` by its mean over the processes of ``group``, in place; returns ``t``.

    SUM then a division (``ReduceOp.AVG`` is NCCL-only). Idempotent on values that are already
    equal on every process (up to rounding of the sum).
    """
    n = dist.get_world_size(group)
    dev = _comm_device(t, group)
    buf = t if dev == t.device else t.detach().to(dev)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    buf.div_(n)
    if buf is not t:
        t.copy_(buf)
    return t


def all_reduce_mean_many_(tensors: Sequence[Tensor], group: ProcessGroup = None) -> None:
    """:func:`all_reduce_mean_` of several tensors, the collectives in flight together (started
    with ``async_op=True`` in order, then waited for)."""
    n = dist.get_world_size(group)
    works = []
    bufs = []
    for t in tensors:
        dev = _comm_device(t, group)
        buf = t if dev == t.device else t.detach().to(dev)
        bufs.append(buf)
        works.append(dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group, async_op=True))
    for t, buf, work in zip(tensors, bufs, works):
        work.wait()
        buf.div_(n)
        if buf is not t:
            t.copy_(buf)


def average_gradients(params: Iterable[Tensor], group: ProcessGroup = None) -> None:
    """Average the ``.grad`` of ``params`` across the processes of ``group`` (one collective).

    For parameters that no DDP wrapper averages, e.g. the task heads when the shared
    parameters are handled by the exact mode (:func:`mtl_fast.backward` with ``params=``).
    Every process must pass the same parameters in the same order; a missing ``.grad`` (a head
    whose task was absent on this process) counts as zeros and is set, so the collective is
    the same on every process. No-op when ``torch.distributed`` is not active.
    """
    params = [p for p in params if p.requires_grad]
    if not params or not is_active(None, group):
        return
    grads: list[Tensor] = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    by_kind: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in grads:
        by_kind.setdefault((g.device, g.dtype), []).append(g)
    flats = []
    for same in by_kind.values():
        flats.append((same, torch.cat([g.reshape(-1) for g in same])))
    all_reduce_mean_many_([flat for _, flat in flats], group)
    for same, flat in flats:
        offset = 0
        for g in same:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def seed_from_rank0(seed: int, device: torch.device, group: ProcessGroup = None) -> int:
    """Process 0's ``seed`` on every process of ``group`` (one collective of one int64 and a
    host read; used once, when a method creates its random generator)."""
    rank0 = dist.get_rank(group) == 0
    mine = torch.tensor([seed if rank0 else 0], dtype=torch.int64, device=device)
    return int(all_reduce_sum(mine, group).item())


def _pack_present(values: Tensor, present: Tensor) -> Tensor:
    vals = torch.where(present, values.detach().to(torch.float64), 0.0)
    return torch.stack([vals, present.to(torch.float64)])


def _unpack_present(packed: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    count = packed[1]
    anywhere = count > 0
    mean = torch.where(anywhere, packed[0] / count.clamp_min(1.0), 0.0)
    return mean.to(dtype), anywhere


def average_present(
    values: Tensor, present: Tensor, group: ProcessGroup = None
) -> tuple[Tensor, Tensor]:
    """Per-task mean of ``values`` over the processes where the task is present.

    Returns (mean [T] in ``values``' dtype, present_anywhere [T] bool); a task absent
    everywhere gets mean 0. One collective of 2·T float64 numbers.
    """
    return start_average_present(values, present, group).wait()


class PendingAverage:
    """An :func:`average_present` collective started with ``async_op=True``.

    :meth:`wait` returns (mean, present_anywhere) and may be called any number of times. With
    NCCL, waiting makes the current stream wait for the collective (no host synchronisation);
    with gloo it blocks until the (CPU) collective is done.
    """

    def __init__(self, values: Tensor, present: Tensor, group: ProcessGroup = None) -> None:
        packed = _pack_present(values, present)
        self._device = values.device
        self._dtype = values.dtype
        self._buf = packed.to(_comm_device(packed, group))
        self._work = dist.all_reduce(self._buf, op=dist.ReduceOp.SUM, group=group, async_op=True)
        self._result: tuple[Tensor, Tensor] | None = None

    def wait(self) -> tuple[Tensor, Tensor]:
        """(mean [T], present_anywhere [T]) on the values' device."""
        if self._result is None:
            if self._work is not None:
                self._work.wait()
                self._work = None
            mean, anywhere = _unpack_present(self._buf.to(self._device), self._dtype)
            self._result = (mean, anywhere)
        return self._result


def start_average_present(
    values: Tensor, present: Tensor, group: ProcessGroup = None
) -> PendingAverage:
    """Start :func:`average_present` asynchronously; :meth:`PendingAverage.wait` for it."""
    return PendingAverage(values, present, group)


_TRIU_CACHE: dict[tuple[int, torch.device], tuple[Tensor, Tensor]] = {}


def _triu(T: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices of the upper triangle of a T×T matrix (cached per T and device:
    no host-to-device copy after the first step)."""
    key = (T, device)
    idx = _TRIU_CACHE.get(key)
    if idx is None:
        iu = torch.triu_indices(T, T, device=device)
        idx = _TRIU_CACHE[key] = (iu[0], iu[1])
    return idx


def reduce_gram(
    G: Tensor | None,
    ok: Tensor,
    bad: Tensor,
    losses: Tensor | None,
    group: ProcessGroup = None,
) -> tuple[Tensor | None, Tensor, Tensor, Tensor | None]:
    """The global Gram matrix and task status from the per-process ones, in ONE collective.

    Args:
        G: this process's Gram matrix [T, T] (symmetric) with zero rows/columns for the tasks
            not ``ok`` here, or ``None`` when G is already global (the exact parameter mode).
        ok: bool [T], tasks present here with a finite gradient.
        bad: bool [T], tasks present here with a non-finite gradient.
        losses: [T] loss values to average over the processes where the task is ``ok``, or
            ``None``.

    Returns:
        (G_global = Σ_r G_r / N² with zero rows/columns for tasks not ok globally (``None``
        when ``G`` was ``None``), ok_global = ok somewhere and bad nowhere, bad_global = bad
        somewhere, losses averaged over the ok processes (``None`` when not given)).

    A task with a non-finite gradient on any process is excluded everywhere (as one process on
    the concatenated batch would see a non-finite gradient), and every process reports it,
    so a ``nonfinite`` error is raised on all of them together. The collective carries the
    upper triangle of G, T(T+1)/2 numbers, plus 2T (+ T for the losses), in G's dtype (float32
    normally; float64 without G): 4·(T(T+1)/2 + 2T) bytes for a float32 Gram matrix.
    """
    T = ok.shape[0]
    device = ok.device
    dtype = torch.promote_types(G.dtype, torch.float32) if G is not None else torch.float64
    parts = []
    if G is not None:
        rows, cols = _triu(T, device)
        parts.append(G.detach()[rows, cols])
    parts.append(ok.to(dtype))
    parts.append(bad.to(dtype))
    if losses is not None:
        parts.append(torch.where(ok, losses.detach().to(device, dtype), 0.0))
    packed = all_reduce_sum(torch.cat(parts), group)
    n = dist.get_world_size(group)
    offset = 0
    G_out = None
    if G is not None:
        G_sum = torch.zeros(T, T, dtype=dtype, device=device)
        m = T * (T + 1) // 2
        G_sum[rows, cols] = packed[:m]
        G_sum = G_sum + G_sum.triu(1).T
        offset = m
    count = packed[offset : offset + T]
    bad_count = packed[offset + T : offset + 2 * T]
    bad_global = bad_count > 0
    ok_global = (count > 0) & ~bad_global
    if G is not None:
        pair = ok_global[:, None] & ok_global[None, :]
        G_out = torch.where(pair, G_sum / float(n * n), 0.0)
    mean = None
    if losses is not None:
        sums = packed[offset + 2 * T : offset + 3 * T]
        mean = torch.where(count > 0, sums / count.clamp_min(1.0), 0.0).to(losses.dtype)
    return G_out, ok_global, bad_global, mean
