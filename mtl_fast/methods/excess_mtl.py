r"""ExcessMTL (He et al., "Robust Multi-Task Learning with Excess Risks", ICML 2024): task weights
from each task's estimated excess risk, its distance to its own optimum, instead of its loss.

With g_t the task gradient, the excess risk of task t is estimated to second order,
r_t ≈ g_tᵀ H_t⁻¹ g_t, with the Hessian H_t approximated by the diagonal of the accumulated
squared gradients (as AdaGrad does). The authors' code (``LibMTL/weighting/ExcessMTL.py`` in
their repository, read for the details, not copied) does, per step:

    a_t ← a_t + g_t ∘ g_t                        (a_t = 0 at the start)
    r_t = Σ_i g_ti² / √(a_ti + 10⁻⁷)
    first step:  r⁰_t = r_t, w unchanged (w_t = 1)
    later:       w_t ← w_t exp(η r_t / r⁰_t),  w ← T w / Σ_s w_s
    update:      Σ_t w_t g_t

η = 10⁻² (``step_size``, their ``robust_step_size``). Dividing by the first step's estimate
makes the weights independent of each task's scale; the exponentiated step is the
distributionally robust (mirror-ascent) update of the paper. At the feature level (``split``,
``mf.backward(features=)``) g_t is the task's feature gradient summed over the batch dimension,
one number per feature (as the authors do with representation gradients), so a is T×F whatever
the batch size; with ``mf.backward(params=)`` it is the parameter gradient (T×P).

Not a Gram-space method: r_t weighs every coordinate by its own history. Cost per step on top of
an equal-weighting step: at the feature level one pass over the T rows for the batch sums (T×F
numbers written) and O(T·F) work on them; with ``params=`` one pass over the rows and the
state a (read and written); then the Gram and combine passes every gradient method makes.
State: a (T×F or T×P, float32; float64 for float64 gradients), r⁰ [T], w [T].

The weights multiply the task gradients of the shared part (like every gradient method here);
the authors' code multiplies the losses, so that each task head's gradient is scaled by w_t too.
For a head trained by its own loss only this changes its step size, not its direction.

Distributed: the batch sums are averaged over the processes (T·F numbers per step), so a, r
and w are the same on every process, those of one process on the whole batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_fast import ops
from mtl_fast._row_step import RowStep
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["ExcessMTL", "excess_risks"]

#: ε of √(a + ε) (the authors' code).
DEFAULT_EPS = 1e-7


def excess_risks(
    grads: list[Tensor], accumulated: list[Tensor], eps: float = DEFAULT_EPS
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """One step of the excess-risk estimate for T tasks.

    Args:
        grads: per block (feature tensor or parameter) the T task gradients as rows [T, F].
        accumulated: per block a [T, F], the squared gradients accumulated so far.

    Returns:
        (r [T] float64, active [T]: a finite, non-zero gradient, the updated a): a is updated
        only for the active tasks, and r is 0 for the others.
    """
    T = grads[0].shape[0]
    device = grads[0].device
    r = torch.zeros(T, dtype=torch.float64, device=device)
    energy = torch.zeros(T, dtype=torch.float64, device=device)
    new_acc = []
    for g, a in zip(grads, accumulated):
        x = g.to(a.dtype)
        sq = x * x
        grown = a + sq
        r = r + (sq / torch.sqrt(grown + eps)).sum(dim=1).to(torch.float64)
        energy = energy + sq.sum(dim=1).to(torch.float64)
        new_acc.append(grown)
    active = torch.isfinite(r) & torch.isfinite(energy) & (energy > 0)
    new_acc = [torch.where(active[:, None], n, a) for n, a in zip(new_acc, accumulated)]
    return torch.where(active, r, 0.0), active, new_acc


def excess_weights(
    w: Tensor, r: Tensor, r0: Tensor, active: Tensor, step_size: float
) -> tuple[Tensor, Tensor]:
    """(w, r⁰) after one step: r⁰_t = r_t at the task's first active step (w unchanged for it),
    else w_t ← w_t exp(η r_t / r⁰_t); then w ← T w / Σ w. float64."""
    first = active & torch.isnan(r0)
    r0 = torch.where(first, r, r0)
    grow = active & ~first & (r0 > 0)
    ratio = torch.where(grow, r / torch.where(grow, r0, 1.0), 0.0)
    w = torch.where(grow, w * torch.exp(step_size * ratio), w)
    return w * (w.shape[0] / w.sum()), r0


class ExcessMTL(Weighting):
    r"""ExcessMTL: exponentiated task weights driven by each task's estimated excess risk.

    He et al. (2024); see :mod:`mtl_fast.methods.excess_mtl` for the estimate, the update, the
    cost and how the weights act. Per step, with g_t task t's gradient (summed over the batch at
    the feature level) and a_t its accumulated squares::

        a_t ← a_t + g_t ∘ g_t,      r_t = Σ_i g_ti² / √(a_ti + ε)
        w_t ← w_t exp(η r_t / r⁰_t),  w ← T w / Σ_s w_s     (r⁰: the task's first r)

    and the shared gradient is Σ_t w_t g_t.

    Args:
        num_tasks: T.
        step_size: η of the exponentiated update (default 10⁻², the authors' default).
        eps: ε of √(a + ε) (default 10⁻⁷).
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: w [T] (Σ w = T, 1 at the start) for the tasks present, 0 for absent ones;
    :attr:`excess_risks` gives the last r, :attr:`initial_excess_risks` r⁰ (NaN before a task's
    first step).

    Masks: an absent task (or one with a zero or non-finite gradient) keeps its statistics and
    its weight before the normalisation.

    Needs: the gradient rows (``split`` or ``mf.backward``; not MultiTaskLinear). With ``split``
    the features per sample must keep their shape (the batch size may change). Extra cost: one
    pass over the T rows for their batch sums (T×F numbers) and O(T·F) work on them (with
    ``params=``: one pass over the rows and a), then one Gram and one combine pass. State: a
    (T×F, or T×P with ``params=``), r⁰ [T] and w [T].
    """

    cuda_graph_capturable = False
    cuda_graph_note = "not yet captured on a GPU (tests/test_cuda_graph_step.py)."

    gradient_based = True
    needs_gradient_rows = True

    def __init__(
        self, num_tasks: int, *, step_size: float = 1e-2, eps: float = DEFAULT_EPS, **kwargs
    ) -> None:
        if not isinstance(num_tasks, int) or num_tasks < 1:
            raise ValueError(f"num_tasks must be a positive int; got {num_tasks!r}")
        super().__init__(num_tasks, **kwargs)
        if not step_size > 0 or not eps > 0:
            raise ValueError(f"step_size and eps must be > 0; got {step_size!r}, {eps!r}")
        self.step_size = float(step_size)
        self.eps = float(eps)
        self._state["accumulated"] = None
        self._state["r0"] = torch.full((num_tasks,), float("nan"), dtype=torch.float64)
        self._state["r"] = torch.zeros(num_tasks, dtype=torch.float64)
        self._state["w"] = torch.ones(num_tasks, dtype=torch.float64)

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    @property
    def excess_risks(self) -> Tensor:
        """r [T] (float64) of the last step (0 for tasks that took no part)."""
        return self._state["r"]

    @property
    def initial_excess_risks(self) -> Tensor:
        """r⁰ [T] (float64): each task's estimate at its first step (NaN before)."""
        return self._state["r0"]

    def _blocks(self, step: RowStep) -> list[Tensor]:
        """The gradients the statistics are kept for, per block: [T, F] batch sums of the
        feature gradients (averaged over the processes), or the parameter rows [T, P]."""
        blocks = []
        for k, rows in enumerate(step.rows):
            if step.kind == "features":
                ones = torch.ones(rows.num_tasks, device=rows.device)
                s = ops.graddrop_sums_rows(rows, ones, step.batch_size(k), backend=self.backend)
                blocks.append(step.mean_over_processes_(s))
            else:
                blocks.append(rows.stacked if rows.stacked is not None else torch.stack(rows.rows))
        return blocks

    def prepare_rows(self, step: RowStep) -> None:
        blocks = self._blocks(step)
        scale = self._step_grad_scale()
        if scale is not None:  # a gradient scaler's s: the statistics are of the true g
            blocks = [b / scale.to(b.device, b.dtype) for b in blocks]
        acc = self._state["accumulated"]
        if acc is None:
            acc = [
                torch.zeros(
                    b.shape,
                    device=b.device,
                    dtype=torch.float64 if b.dtype == torch.float64 else torch.float32,
                )
                for b in blocks
            ]
        have, want = [tuple(a.shape) for a in acc], [tuple(b.shape) for b in blocks]
        if have != want:
            raise ValueError(
                f"ExcessMTL keeps per-coordinate statistics of shapes {have} but this step's "
                f"gradients are {want}: keep the features per sample (or the parameters) the same"
            )
        acc = [a.to(b.device) for a, b in zip(acc, blocks)]
        r, active, acc = excess_risks(blocks, acc, self.eps)
        device = r.device
        w, r0 = excess_weights(
            self._state["w"].to(device),
            r,
            self._state["r0"].to(device),
            active,
            self.step_size,
        )
        self._state.update(accumulated=acc, r=r, r0=r0, w=w)

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        present = inputs.present.to(G.device)
        return torch.where(present, self._state["w"].to(G.device), 0.0)

    def extra_repr(self) -> str:
        return f"num_tasks={self.num_tasks}, step_size={self.step_size}"
