"""A multi-task linear head whose backward balances the shared features' gradient in Gram space
without ever forming the T task gradients.

For a linear head on shared features z ∈ R^{N×C} (N samples: the leading dims of the input
flattened), ``logits = z Wᵀ + b`` with W ∈ R^{Tk×C} and k outputs per task (task t owns rows
t·k … t·k+k−1 of W, entries t·k … t·k+k−1 of b and columns t·k … t·k+k−1 of the logits), the
gradient of task t's loss L_t with respect to z is a product of two thin factors:

    g_t = Δ_t W_t,   Δ_t = ∂L_t/∂(task t's logits) ∈ R^{N×k},   W_t ∈ R^{k×C}

(k = 1: the outer product g_t = δ_t w_tᵀ). Autograd hands the Function's backward the whole
Δ = [Δ_1 … Δ_T] ∈ R^{N×Tk} at once (each task's loss reaches only its own columns), so

* the Gram matrix of the T feature gradients (docs/design.md, "Gram space") is

      G_ab = ⟨g_a, g_b⟩ = Σ_{i,j} (Δ_aᵀ Δ_b)_{ij} (W_a W_bᵀ)_{ij}    (k = 1: G = (ΔᵀΔ) ∘ (W Wᵀ)),

  O(T²k²(N + C)) work and O(T²) memory instead of O(T²NC) and a T×N×C Jacobian;
* the balanced feature gradient is Σ_t α_t g_t = (Δ diag(α ⊗ 1_k)) W: one N×Tk×C product,
  the cost of the ordinary input gradient of a linear layer.

The weights α come from the method exactly as in :meth:`mtl_fast.Weighting.split`'s backward:
:meth:`mtl_fast.Weighting.balance_gram` applies the absent-task / non-finite policy, the
cross-process sum and the method's solve. The head's own weight and bias get their ordinary
(unweighted, per-task) gradients, as separate per-task heads would on the Jacobian route.

Loss-based methods, ``method.eval()`` and ``torch.no_grad()`` make it a plain linear layer.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from mtl_fast import _backend
from mtl_fast.reference._chunks import accumulation_dtype
from mtl_fast.reference.structured_gram import check_structured
from mtl_fast.reference.structured_gram import structured_gram as structured_gram_reference

if TYPE_CHECKING:
    from mtl_fast.weighting import Weighting

__all__ = ["MultiTaskLinear", "balanced_input_grad", "structured_gram"]


def structured_gram(
    delta: Tensor, weight: Tensor, num_tasks: int, *, backend: str = "auto"
) -> Tensor:
    """:func:`mtl_fast.reference.structured_gram`, served by the Triton kernel
    (:mod:`mtl_fast.kernels.structured_gram`) where the backend resolves to Triton (CUDA tensors
    with ``"auto"``; CPU tensors too under ``TRITON_INTERPRET=1`` with ``"triton"``).

    The kernel needs Δ and W of one dtype (fp32/bf16/fp16); W is cast to Δ's dtype when they
    differ (autocast). Returns float32 [T, T] (float64 on the reference for float64 inputs).
    """
    check_structured(delta, weight, num_tasks)
    if _backend.resolve(backend, delta.device, delta.dtype) == "triton":
        from mtl_fast.kernels.structured_gram import structured_gram as kernel

        if weight.dtype != delta.dtype:
            weight = weight.to(delta.dtype)
        return kernel(delta, weight, num_tasks)
    return structured_gram_reference(delta, weight, num_tasks)


def balanced_input_grad(delta: Tensor, weight: Tensor, alpha: Tensor) -> Tensor:
    """Σ_t α_t g_t = (Δ diag(α ⊗ 1_k)) W, the balanced gradient of the head's input [N, C].

    Tasks with α_t = 0 are skipped exactly (their Δ columns and W rows are replaced by 0 before
    the product), so a non-finite gradient of an inactive task does not poison the sum, as in
    :func:`mtl_fast.combine`. Δ is scaled in fp32 (float64 for float64 inputs) and the product
    runs in W's dtype (fp32 accumulation for 16-bit inputs, as PyTorch's GEMMs do).

    Args:
        delta: Δ [N, T·k].
        weight: W [T·k, C] (the dtype of the product).
        alpha: α [T] on Δ's device (read on the device only).

    Returns:
        [N, C] in W's dtype.
    """
    T = alpha.shape[0]
    k = check_structured(delta, weight, T)
    acc = accumulation_dtype(delta.dtype)
    a = alpha.to(acc).repeat_interleave(k) if k > 1 else alpha.to(acc)
    skip = a == 0
    scaled = torch.where(skip, 0.0, delta.to(acc) * a)
    w = torch.where(skip[:, None], 0.0, weight)
    return scaled.to(weight.dtype) @ w


class _MultiTaskLinearFunction(torch.autograd.Function):
    """Forward: ``z Wᵀ + b``. Backward: ordinary gradients for W and b; for z, the structured
    Gram, α from the method and the balanced combination (module docstring)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        method: Weighting,
        num_tasks: int,
        token: int,
    ) -> Tensor:
        out = F.linear(z, weight, bias)
        ctx.method = method
        ctx.num_tasks = num_tasks
        ctx.token = token
        ctx.has_bias = bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.save_for_backward(z, weight)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor):  # type: ignore[override]
        z, weight = ctx.saved_tensors
        method: Weighting = ctx.method
        T = ctx.num_tasks
        cd = grad_out.dtype  # the dtype the forward computed in (differs from W's under autocast)
        Wc = weight.to(cd)
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_w = (grad_out.T @ z.to(cd)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(0).to(ctx.bias_dtype)
        G = structured_gram(grad_out, Wc, T, backend=method.backend)
        alpha = method.balance_gram(G, token=ctx.token)
        grad_z = None
        if ctx.needs_input_grad[0]:
            grad_z = balanced_input_grad(grad_out, Wc, alpha).to(z.dtype)
        return grad_z, grad_w, grad_b, None, None, None


class MultiTaskLinear(nn.Module):
    """T linear task heads on shared features, balanced by a weighting method in Gram space.

    A drop-in for ``nn.Linear(in_features, num_tasks * outputs_per_task)`` as the last layer of a
    multi-task model whose tasks share everything but their row(s) of the last layer::

        method = mf.IMTLG()                                   # any Weighting
        head = mf.MultiTaskLinear(C, T, method=method)        # was nn.Linear(C, T)
        logits = head(encoder(x))                             # [B, T]; no method.split needed
        losses = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(0)
        method.loss(losses, mask).backward()                  # one ordinary backward
        optimizer.step(); method.weights                      # the last α

    Output layout: ``[..., T·k]``; task t's outputs are the columns ``t·k … t·k+k−1``
    (``head.per_task(out)`` views them as ``[..., T, k]``). The parameters are those of
    ``nn.Linear(in_features, T·k)`` with the same default initialisation (so state dicts are
    interchangeable): ``weight`` [T·k, C], ``bias`` [T·k].

    With a gradient-based method (IMTL-G, MGDA, ...) in training mode with gradients enabled,
    the backward receives Δ = ∂(Σ_t L_t)/∂logits [N, T·k] (N: the input's leading dims
    flattened), forms the Gram matrix of the T feature gradients g_t = Δ_t W_t in the structured
    form G = Σ_{ij} (Δ_aᵀΔ_b)_{ij}(W_aW_bᵀ)_{ij} (Triton kernel on CUDA, the reference
    elsewhere), asks the method for α (:meth:`mtl_fast.Weighting.balance_gram`: masks,
    non-finite policy, cross-process sum, solve) and returns Σ_t α_t g_t = (Δ diag α) W as the
    input's gradient. Equal, up to rounding, to ``method.split(z)`` followed by T separate
    ``nn.Linear(C, k)`` heads — with O(T²k²(N + C)) work and O(T²) memory instead of a
    T×N×C Jacobian. ``weight`` and ``bias`` get their ordinary per-task gradients.

    Otherwise (loss-based methods, ``method.eval()``, ``torch.no_grad()``) it is ``F.linear``;
    as with ``split``, the method's training mode decides, not the layer's. One balanced forward
    per method and backward (a second raises, like a second ``split``); no double backward.

    The method is referenced, not registered as a submodule: put ``method.parameters()`` in the
    optimizer and save ``method.state_dict()`` yourself, as with ``split``.

    Args:
        in_features: C.
        num_tasks: T (must match ``method.num_tasks`` when that is set; sets it otherwise).
        method: the :class:`mtl_fast.Weighting` whose ``loss`` the task losses go through.
        outputs_per_task: k (e.g. the classes of a per-task softmax).
        bias: learn an additive bias.
        device, dtype: of the parameters.
    """

    def __init__(
        self,
        in_features: int,
        num_tasks: int,
        *,
        method: Weighting,
        outputs_per_task: int = 1,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        from mtl_fast.weighting import Weighting

        for name, v in (
            ("in_features", in_features),
            ("num_tasks", num_tasks),
            ("outputs_per_task", outputs_per_task),
        ):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int; got {v!r}")
        if not isinstance(method, Weighting):
            raise TypeError(f"method must be a mtl_fast.Weighting; got {type(method).__name__}")
        method.resolve_num_tasks(num_tasks, "MultiTaskLinear")
        self.in_features = in_features
        self.num_tasks = num_tasks
        self.outputs_per_task = outputs_per_task
        # Not a submodule: the method's parameters and state stay the user's to optimise/save.
        self._method_ref = (method,)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(num_tasks * outputs_per_task, in_features, **factory)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(num_tasks * outputs_per_task, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @property
    def method(self) -> Weighting:
        """The weighting method (referenced, not a submodule)."""
        return self._method_ref[0]

    @property
    def out_features(self) -> int:
        """T·k."""
        return self.num_tasks * self.outputs_per_task

    def reset_parameters(self) -> None:
        """``nn.Linear``'s default: W ~ U(±1/√C) (Kaiming-uniform with a = √5), b ~ U(±1/√C)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def per_task(self, output: Tensor) -> Tensor:
        """View an output ``[..., T·k]`` as ``[..., T, k]`` (task t: ``[..., t, :]``)."""
        return output.unflatten(-1, (self.num_tasks, self.outputs_per_task))

    def forward(self, input: Tensor) -> Tensor:
        """``input @ weight.T + bias``: [..., C] → [..., T·k] (balanced backward, see class)."""
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor; got {type(input).__name__}")
        if input.dim() == 0 or input.shape[-1] != self.in_features:
            raise ValueError(
                f"input must have shape [..., {self.in_features}]; got {tuple(input.shape)}"
            )
        method = self.method
        if not (method.gradient_based and method.training and torch.is_grad_enabled()):
            return F.linear(input, self.weight, self.bias)
        if not input.requires_grad:
            raise ValueError(
                f"the input does not require grad: {type(method).__name__} balances the "
                "gradients of the shared features, so MultiTaskLinear must receive the output "
                "of the shared encoder (or wrap evaluation in torch.no_grad() / method.eval())"
            )
        if not input.is_floating_point():
            raise TypeError(f"input must be floating point; got {input.dtype}")
        lead = input.shape[:-1]
        method.resolve_num_tasks(self.num_tasks, "MultiTaskLinear")
        token = method.open_split("MultiTaskLinear forward")
        out = _MultiTaskLinearFunction.apply(
            input.reshape(-1, self.in_features),
            self.weight,
            self.bias,
            method,
            self.num_tasks,
            token,
        )
        return out.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_tasks={self.num_tasks}, "
            f"outputs_per_task={self.outputs_per_task}, bias={self.bias is not None}, "
            f"method={type(self.method).__name__}"
        )
