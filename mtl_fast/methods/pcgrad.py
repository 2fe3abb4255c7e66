"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020), in Gram space.

Gradient surgery (their Algorithm 1): for every task i, starting from g_i^PC = g_i, visit the
other tasks j in a random order and, when they conflict (g_i^PC · g_j < 0), project g_i^PC onto
the normal plane of g_j:

    g_i^PC ← g_i^PC − (g_i^PC · g_j / ‖g_j‖²) g_j.

The update is g = Σ_i g_i^PC.

Gram space: every g_i^PC stays a combination of the original gradients, g_i^PC = Σ_k C_ik g_k,
so it is tracked by the row C_i of a T×T coefficient matrix (C = I at the start). Every dot
product is read from G: g_i^PC · g_j = (C G)_ij and ‖g_j‖² = G_jj, and a projection subtracts
(C G)_ij / G_jj from C_ij. Finally g = Σ_i Σ_k C_ik g_k, so α = the column sums of C.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting


def random_orders(num_tasks: int, generator: torch.Generator) -> Tensor:
    """[T, T−1] int64: row i is a uniformly random order of the tasks other than i.

    Drawn as the argsort of T×T uniform keys with the diagonal pushed last, on the generator's
    device (no host synchronisation).
    """
    T = num_tasks
    keys = torch.rand((T, T), generator=generator, device=generator.device, dtype=torch.float64)
    keys = keys + 2.0 * torch.eye(T, dtype=keys.dtype, device=keys.device)
    return keys.argsort(dim=1)[:, : T - 1]


def pcgrad_coefficients(G: Tensor, orders: Tensor) -> Tensor:
    """The coefficient matrix C [T, T] (float64) of the projected gradients, g_i^PC = Σ_k C_ik g_k.

    Args:
        G: the Gram matrix [T, T] of the task gradients.
        orders: [T, T−1] int64, row i the order in which task i visits the other tasks
            (:func:`random_orders`).

    Inactive tasks (zero or non-finite gradient, see :func:`mtl_fast.reference.active_tasks`)
    have a zero row and are never projected onto. All T rows are processed at once: step k
    handles the pair (i, orders[i, k]) for every i.
    """
    T = G.shape[0]
    G64 = torch.nan_to_num(G.to(torch.float64), nan=0.0, posinf=0.0, neginf=0.0)
    active = active_tasks(G.to(torch.float64))
    pair = active[:, None] & active[None, :]
    G64 = torch.where(pair, G64, 0.0)
    diag = G64.diagonal()
    C = torch.diag(active.to(torch.float64))
    orders = orders.to(G.device)
    for k in range(T - 1):
        j = orders[:, k]  # task visited by each row i at this step
        dots = (C * G64[:, j].T).sum(dim=1)  # (C G)_{i, j_i} = g_i^PC · g_{j_i}
        conflict = active[j] & (dots < 0)
        coef = torch.where(conflict, dots / torch.where(active[j], diag[j], 1.0), 0.0)
        C = C.scatter_add(1, j[:, None], -coef[:, None])
    return C


def pcgrad_weights(G: Tensor, orders: Tensor) -> Tensor:
    """α [T] (float64) with Σ_i g_i^PC = Σ_t α_t g_t: the column sums of
    :func:`pcgrad_coefficients`."""
    return pcgrad_coefficients(G, orders).sum(dim=0)


class PCGrad(Weighting):
    """PCGrad: project each task gradient off the gradients it conflicts with, then sum.

    Computed in Gram space (:mod:`mtl_fast.methods.pcgrad`): O(T³) on T×T matrices, no gradient
    copies, equal to the gradient-space algorithm up to rounding. The random visiting orders
    (an independent permutation of the other tasks for every task, every step; the paper's
    Algorithm 1) come from a ``torch.Generator`` kept in the method's state, so a run resumed
    from ``state_dict()`` draws the same orders as an unbroken run.

    Args:
        num_tasks: T (optional).
        seed: seed of the generator (default: drawn from PyTorch's global RNG at construction,
            so ``torch.manual_seed`` makes runs reproducible). Under ``torch.distributed`` every
            process uses process 0's seed, so all draw the same orders.
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] with g = Σ_t α_t g_t (all 1 when no pair conflicts; 0 for absent tasks).

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, O(T³) small ops.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "its random task order comes from a private CUDA generator, which a capture refuses "
        "unless the graph registers it (torch raised 'Attempt to increase offset for a CUDA "
        "generator not in capture mode' on an H200, 2026-12-04)."
    )

    gradient_based = True

    def __init__(self, num_tasks: int | None = None, *, seed: int | None = None, **kwargs) -> None:
        super().__init__(num_tasks, **kwargs)
        self._init_generator(seed)

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        T = G.shape[0]
        orders = random_orders(T, self._generator(G.device)).to(G.device)
        return pcgrad_weights(G, orders)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, seed={self._state['seed']}"
