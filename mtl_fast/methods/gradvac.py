r"""GradVac (Wang et al., "Gradient Vaccine", ICLR 2021), in Gram space.

Gradient Vaccine generalises PCGrad: instead of acting only on negative cosine similarities it
keeps, for every ordered pair of tasks (i, j), an adaptive similarity goal φ̂_ij, an exponential
moving average (EMA) of the similarities observed so far, and moves the gradient of task i
towards g_j whenever their current similarity falls below the goal (the paper's Algorithm 2,
"GradVac update rule", with one parameter group).

Each step, for every task i, starting from g'_i = g_i, visit the other tasks j in a random order::

    φ_ij = g'_i·g_j / (‖g'_i‖ ‖g_j‖)                                         (cosine, eq. 1)
    if φ_ij < φ̂_ij:
        g'_i ← g'_i + ‖g'_i‖ (φ̂_ij √(1−φ_ij²) − φ_ij √(1−φ̂_ij²)) / (‖g_j‖ √(1−φ̂_ij²)) · g_j
                                                                               (eq. 2)
    φ̂_ij ← (1−β) φ̂_ij + β φ_ij                                              (eq. 3)

with φ̂ initialised to 0 and β = 0.01 (the paper's value). The correction is the closed form of
the coefficient that sets the angle between g'_i and g_j to arccos φ̂_ij (law of sines in the
plane of g'_i and g_j). The update is g = Σ_i g'_i. The EMA is fed the similarity measured
*before* the correction (the paper's algorithm; torchjd does the same).

Gram space (the machinery of :mod:`mtl_fast.methods.pcgrad`): every g'_i stays a combination of
the original gradients, g'_i = Σ_k C_ik g_k (C = I at the start), and every quantity above is
read from G = J Jᵀ:

    g'_i·g_j = (C G)_ij,     ‖g'_i‖² = (C G Cᵀ)_ii = Σ_k C_ik (C G)_ik,     ‖g_j‖² = G_jj,

and a correction adds w to C_ij (and w G_j to row i of C G). The T rows are processed together
(step k handles the pair (i, order_i[k]) for every i; rows never interact), so a step costs
T − 1 rounds of O(T²) work, O(T³) in all, and the weights are α = the column sums of C
(g = Σ_t α_t g_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast.methods.pcgrad import random_orders
from mtl_fast.reference import active_tasks
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["GradVac", "gradvac_coefficients", "gradvac_weights"]

#: The paper's EMA rate β of the similarity goals ("β = 1e-2").
DEFAULT_BETA = 0.01
#: Cap of the goal used in eq. 2: φ̂ = 1 exactly makes the closed-form coefficient infinite (no
#: finite multiple of g_j makes g'_i parallel to it). The goal used is min(φ̂, PHI_MAX), i.e. an
#: angle of at least ~1.4e-6 rad; the stored EMA is not capped.
PHI_MAX = 1.0 - 1e-12


def gradvac_coefficients(
    G: Tensor, targets: Tensor, orders: Tensor, beta: float = DEFAULT_BETA
) -> tuple[Tensor, Tensor]:
    r"""One GradVac step in Gram space.

    Args:
        G: the Gram matrix [T, T] of the task gradients (G_ij = g_i·g_j).
        targets: φ̂ [T, T], the similarity goals before this step (row i: task i's goals
            towards every j; the diagonal is unused).
        orders: [T, T−1] int64, row i the order in which task i visits the other tasks
            (:func:`mtl_fast.methods.pcgrad.random_orders`).
        beta: the EMA rate β of eq. 3.

    Returns:
        (C [T, T] float64 with g'_i = Σ_k C_ik g_k, the updated goals φ̂ [T, T] float64).

    Inactive tasks (zero or non-finite gradient, :func:`mtl_fast.reference.active_tasks`) have a
    zero row in C, are never moved towards, and the goals of every pair involving them are left
    unchanged. When a modified gradient vanishes (g'_i = 0, only possible after a correction
    towards an exactly opposite g_j), its similarity is taken as 0 and it is not corrected further
    (the correction is proportional to ‖g'_i‖). No host synchronisation: fixed loop of T − 1
    rounds of tensor ops.
    """
    T = G.shape[0]
    G64 = G.to(torch.float64)
    active = active_tasks(G64)
    pair = active[:, None] & active[None, :]
    G64 = torch.where(pair, torch.nan_to_num(G64, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
    norms = torch.where(active, G64.diagonal().clamp_min(0.0).sqrt(), 1.0)
    phi_hat = targets.to(device=G.device, dtype=torch.float64)
    orders = orders.to(G.device)
    # Everything that does not depend on the corrections, for all T − 1 rounds at once: every
    # pair (i, orders[i, k]) is visited once per step, so its goal is fixed during the step.
    ok_all = active[:, None] & active[orders]  # [T, T−1]
    goal_all = phi_hat.gather(1, orders)
    capped_all = goal_all.clamp(max=PHI_MAX)
    sin_goal_all = (1.0 - capped_all * capped_all).clamp_min(0.0).sqrt()
    inv_nj_all = 1.0 / norms[orders]  # 1 / ‖g_j‖
    scale_all = inv_nj_all / sin_goal_all  # 1 / (‖g_j‖ √(1 − φ̂²))
    C = torch.diag(active.to(torch.float64))
    CG = G64 * active[:, None]  # (C G)_ij = g'_i · g_j
    observed = []
    for k in range(T - 1):
        j = orders[:, k : k + 1]  # [T, 1]: the task visited by each row i in this round
        dot = CG.gather(1, j).squeeze(1)
        norm_i = (C * CG).sum(dim=1).clamp_min(0.0).sqrt()  # ‖g'_i‖
        cos_scale = torch.where(norm_i > 0, inv_nj_all[:, k] / norm_i, 0.0)
        phi = (dot * cos_scale).clamp(-1.0, 1.0)  # eq. 1 (0 when g'_i = 0)
        sin_phi = (1.0 - phi * phi).clamp_min(0.0).sqrt()
        capped = capped_all[:, k]
        w = norm_i * (capped * sin_phi - phi * sin_goal_all[:, k]) * scale_all[:, k]  # eq. 2
        w = torch.where(ok_all[:, k] & (phi < capped), w, 0.0)
        C = C.scatter_add(1, j, w[:, None])
        CG = CG + w[:, None] * G64.index_select(0, j.squeeze(1))
        observed.append(phi)
    if observed:
        phi_all = torch.stack(observed, dim=1)  # [T, T−1], the similarities before correction
        updated = torch.where(ok_all, (1.0 - beta) * goal_all + beta * phi_all, goal_all)
        phi_hat = phi_hat.scatter(1, orders, updated)  # eq. 3
    else:
        phi_hat = phi_hat.clone()
    return C, phi_hat


def gradvac_weights(
    G: Tensor, targets: Tensor, orders: Tensor, beta: float = DEFAULT_BETA
) -> tuple[Tensor, Tensor]:
    """(α [T] float64 with Σ_i g'_i = Σ_t α_t g_t — the column sums of
    :func:`gradvac_coefficients` — and the updated goals φ̂ [T, T])."""
    C, phi_hat = gradvac_coefficients(G, targets, orders, beta)
    return C.sum(dim=0), phi_hat


class GradVac(Weighting):
    r"""GradVac: move each task gradient towards the others' up to an adaptive similarity goal.

    Computed in Gram space (:mod:`mtl_fast.methods.gradvac`: eq. 1–3 of Wang et al. 2021 on the
    T×T Gram matrix, O(T³) small ops, no gradient copies), equal to the gradient-space algorithm
    up to rounding. State (all in ``state_dict()``): the goals φ̂ [T, T] (float64, EMA rate β,
    initialised to 0, on the gradients' device) and a ``torch.Generator`` drawing, every step,
    an independent random order of the other tasks for every task (the paper's "j ∼ B∖i in
    random order"), so a run resumed from ``state_dict()`` equals an unbroken one.

    Args:
        num_tasks: T (optional).
        beta: the EMA rate β of the goals (default 0.01, the paper's value).
        seed: seed of the generator (default: drawn from PyTorch's global RNG at construction,
            so ``torch.manual_seed`` makes runs reproducible). Under ``torch.distributed`` every
            process uses process 0's seed, so all draw the same orders.
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: α [T] with g = Σ_t α_t g_t (0 for absent tasks; all 1 when no pair is below its
    goal). :attr:`targets`: φ̂. At the first step every goal is 0 and eq. 2 reduces to
    w = −g'_i·g_j / ‖g_j‖² for conflicting pairs: exactly PCGrad's projection.

    Masks: an absent (or zero-gradient) task has weight 0, no gradient is moved towards it and
    the goals of every pair involving it are untouched.

    Differences from other implementations (documented, deliberate):

    * torchjd 0.18 ``GradVac`` defaults to β = 0.5 and draws its orders with the global RNG
      (``torch.randperm``, one call per task, on the CPU: a host round trip every step); it adds
      ε = 1e-8 to the denominators, where this implementation leaves inactive tasks out instead
      (so the result is invariant to the scale of the gradients). With the same orders and
      ε = 0 the two agree to rounding (tests/methods/test_gradvac.py).
    * LibMTL's ``GradVac`` updated the goal only when a correction happened until its
      February 2024 update; it now updates it after every comparison, as the paper and this
      class do (an older LibMTL checkout differs from this class there).
    * One parameter group: the gradients handed to ``split`` (or the parameters given to
      :func:`mtl_fast.backward`) form a single group; the paper's per-component goals φ̂_ijk
      (one per layer/module) need one method instance per group.

    Needs: feature gradients. Extra cost: one Gram pass, one combine pass, O(T³) small ops and
    a T×T state.
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "replays diverged from eager steps on an H200 (2026-12-04): part of its per-step state "
        "lives on the host and is frozen into the graph."
    )

    gradient_based = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        beta: float = DEFAULT_BETA,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1]; got {beta!r}")
        self.beta = float(beta)
        self._init_generator(seed)
        self._state["targets"] = None

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def targets(self) -> Tensor:
        """The similarity goals φ̂ [T, T] (float64; zeros before the first step)."""
        phi = self._state["targets"]
        if phi is None:
            if self.num_tasks is None:
                raise RuntimeError("GradVac has no goals yet: pass num_tasks or run one step")
            return torch.zeros(self.num_tasks, self.num_tasks, dtype=torch.float64)
        return phi

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        T = G.shape[0]
        phi = self._state["targets"]
        if phi is None:
            phi = torch.zeros(T, T, dtype=torch.float64, device=G.device)
        elif phi.device != G.device:
            phi = phi.to(G.device)
        orders = random_orders(T, self._generator(G.device)).to(G.device)
        alpha, phi = gradvac_weights(G, phi, orders, self.beta)
        self._state["targets"] = phi
        return alpha

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, beta={self.beta}, seed={self._state['seed']}"
