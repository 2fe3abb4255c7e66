r"""GradDrop (Chen et al., "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign
Dropout", NeurIPS 2020): per-coordinate sign dropout of the task gradients.

At the shared features A (``split``'s input), with ∇_t the gradient of task t's loss there
(their Algorithm 1, f the identity):

    S_t = Σ_batch sgn(A) ∘ ∇_t                      (summed over the batch dimension)
    P   = ½ (1 + Σ_t S_t / Σ_t |S_t|)               (the positive sign purity, per feature)
    M_t = [P > U] [S_t > 0] + [P < U] [S_t < 0],    U ~ Uniform[0, 1] per feature
    ∇   = Σ_t (ℓ_t + (1 − ℓ_t) M_t) ∘ ∇_t           (ℓ_t: the leak, 0 by default)

Every coordinate keeps the task gradients of one sign: the positive ones with probability P,
the negative ones otherwise; where every task agrees nothing is dropped. A task with leak ℓ_t = 1
is never dropped.

Not a Gram-space method: the rule is per coordinate, so it runs as an elementwise pass over the
T rows (:func:`mtl_fast.ops.graddrop_combine_rows`: a Triton kernel on CUDA, the native
extension on the CPU, :mod:`mtl_fast.reference.graddrop` elsewhere) instead of the combine. Cost
per step on top of an equal-weighting step: the Gram pass every gradient method makes (the
absent / non-finite policy and :attr:`~mtl_fast.Weighting.diagnostics`), one pass reading the T
rows and A for the batch sums S (T×F numbers, F the features per sample) and the sign-dropout
pass in place of the combine (reads the T rows, writes the result); U [F] drawn per step. With
``batch=False`` (the per-element rule, also what ``mf.backward(params=)`` gets: parameter
gradients have no batch dimension) there is no sums pass, but U has one draw per element (D
numbers). No state but the random stream (seeded and kept in ``state_dict()``).

Distributed: S is averaged over the processes (T·F numbers per step and feature tensor, one
all-reduce), so every process draws the same U for the same masks and DDP's averaged gradient is
that of one process on the whole batch. With ``batch=False`` under ``split`` each process draws
its own U for its own samples' coordinates: the same distribution, not the same draws.

Compared with LibMTL's implementation (``LibMTL/weighting/GradDrop.py``, read for the details,
not copied): the same batch-summed, sign-corrected S, ε = 1e-7 in P's denominator, one U per
feature shared by the batch and a single leak for all tasks (here one per task, as the paper
allows). The tests check the method against a direct transcription of Algorithm 1
(``tests/methods/test_graddrop.py``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from mtl_fast import ops
from mtl_fast._row_step import RowStep
from mtl_fast.weighting import StepInputs, Weighting

__all__ = ["GradDrop"]


class GradDrop(Weighting):
    """GradDrop: keep one randomly chosen sign of the task gradients at every coordinate.

    Chen et al. (2020); see :mod:`mtl_fast.methods.graddrop` for the algorithm and its cost.
    At the shared features A, with ∇_t task t's gradient there (Algorithm 1)::

        S_t = Σ_batch sgn(A) ∘ ∇_t,      P = ½ (1 + Σ_t S_t / Σ_t |S_t|)
        M_t = [P > U] [S_t > 0] + [P < U] [S_t < 0],     U ~ Uniform[0, 1] per feature
        ∇   = Σ_t (ℓ_t + (1 − ℓ_t) M_t) ∘ ∇_t

    Args:
        num_tasks: T (optional unless ``leak`` gives one value per task).
        leak: ℓ in [0, 1], one number for all tasks or one per task (default 0).
        batch: sum the gradients over the batch dimension (the first of each shared feature
            tensor) before forming the sign purity, as the paper does (default); ``False``: the
            per-element rule.
        seed: seed of the method's random stream (default: drawn from PyTorch's global RNG at
            construction); under ``torch.distributed`` process 0's seed is used everywhere.
        **kwargs: see :class:`~mtl_fast.Weighting`.

    ``weights``: 1 for every task taking part in the step, 0 for absent ones (the masks act per
    coordinate and have no per-task weight). :attr:`diagnostics` describe the task gradients
    before the dropout.

    Needs: feature gradients (and the features themselves, kept by ``split`` for the backward;
    ``mf.backward(features=)`` has them). Not available through MultiTaskLinear (it forms only
    the Gram matrix). Extra cost: one Gram pass, one pass over the T rows and A for the sums S
    (T×F numbers) and the sign-dropout pass in place of the combine; U [F] drawn per step.
    State: the random stream (seeded).
    """

    cuda_graph_capturable = False
    cuda_graph_note = (
        "its uniform draws come from a private generator, which a CUDA-graph capture refuses "
        "unless the graph registers it (as for PCGrad); not yet captured on a GPU."
    )

    gradient_based = True
    needs_gradient_rows = True
    needs_features = True

    def __init__(
        self,
        num_tasks: int | None = None,
        *,
        leak: float | Sequence[float] = 0.0,
        batch: bool = True,
        seed: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(num_tasks, **kwargs)
        values = [float(leak)] if isinstance(leak, (int, float)) else [float(v) for v in leak]
        if not values or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"leak must be in [0, 1] (one value or one per task); got {leak!r}")
        if len(values) > 1:
            self.resolve_num_tasks(len(values), "GradDrop(leak=...)")
        self._leak = values
        self.batch = bool(batch)
        self._init_generator(seed)
        self._plan: tuple[RowStep, list[tuple[Tensor | None, Tensor]], set[int]] | None = None

    def leak(self, num_tasks: int) -> Tensor:
        """ℓ [T] (float64)."""
        v = self._leak if len(self._leak) > 1 else self._leak * num_tasks
        return torch.tensor(v, dtype=torch.float64)

    def initial_weights(self, num_tasks: int, device: torch.device | None = None) -> Tensor:
        return torch.ones(num_tasks, device=device)

    def gram_weights(self, G: Tensor, inputs: StepInputs) -> Tensor:
        return inputs.present.to(device=G.device, dtype=torch.float32)

    def _plan_step(self, step: RowStep, alpha: Tensor) -> list[tuple[Tensor | None, Tensor]]:
        """(S or None, U) per feature tensor, in order: the batch sums (averaged over the
        processes) and the uniform draws of this step."""
        plan = []
        for k, rows in enumerate(step.rows):
            acc = torch.float64 if rows.dtype == torch.float64 else torch.float32
            w = alpha.to(device=rows.device, dtype=acc)
            sums = None
            if self.batch and step.kind == "features":
                sums = ops.graddrop_sums_rows(
                    rows, w, step.batch_size(k), step.features[k], backend=self.backend
                )
                step.mean_over_processes_(sums)
            n = rows.numel if sums is None else sums.shape[1]
            gen = self._generator(rows.device)
            plan.append((sums, torch.rand(n, generator=gen, device=rows.device, dtype=acc)))
        return plan

    def combine_rows(
        self, step: RowStep, alpha: Tensor, index: int, out: Tensor | None = None
    ) -> Tensor:
        if self._plan is None or self._plan[0] is not step:
            # All feature tensors at the first combine of the step, in order, whatever order the
            # caller combines them in (mf.backward's hooks): the same draws on every route.
            self._plan = (step, self._plan_step(step, alpha), set())
        plan, served = self._plan[1], self._plan[2]
        sums, uniform = plan[index]
        served.add(index)
        if len(served) == len(plan):
            self._plan = None  # the step is done: drop its rows, sums and draws
        rows = step.rows[index]
        acc = uniform.dtype
        return ops.graddrop_combine_rows(
            rows,
            alpha.to(device=rows.device, dtype=acc),
            uniform,
            self.leak(rows.num_tasks).to(device=rows.device, dtype=acc),
            sums=sums,
            activations=step.features[index] if sums is None else None,
            out=out,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        leak = self._leak[0] if len(self._leak) == 1 else self._leak
        return f"num_tasks={self.num_tasks}, leak={leak}, batch={self.batch}"
