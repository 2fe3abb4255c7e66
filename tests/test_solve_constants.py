"""One source for the solve constants: mtl_fast._solve_constants.

The reference (mtl_fast/reference/solve.py), the native CPU solvers (mtl_fast._C, through
mtl_fast.ops) and the Triton kernels (kernels/solve.py) must all read the tolerances, iteration
counts and shifts from that module. Each test changes constants there and checks that every
implementation follows: its result moves away from the one with the shipped constants and agrees
with the others under the changed ones. An implementation with a copy of its own (a literal, a
C++ default, an import-time binding) would keep its old result and fail.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from mtl_fast import _backend, ops
from mtl_fast import _solve_constants as SC
from mtl_fast import reference as ref

#: The device the Triton kernels run on here (the interpreter on the CPU without a GPU).
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _native(op: Callable[..., Tensor]) -> Callable[[Tensor], Tensor]:
    def run(G: Tensor) -> Tensor:
        if not _backend.native_available():
            pytest.skip("mtl_fast._C is not built here")
        return op(G, backend="auto")  # the CPU dispatcher: the native solver for these T

    return run


def _kernel(name: str) -> Callable[[Tensor], Tensor]:
    def run(G: Tensor) -> Tensor:
        if not (_backend.triton_available() and _backend.triton_can_run(KERNEL_DEVICE)):
            pytest.skip("the Triton kernels cannot run here")
        import mtl_fast.kernels as kernels

        return getattr(kernels, name)(G.to(KERNEL_DEVICE)).cpu()

    return run


IMTL_G = {
    "reference": ref.imtl_g_weights,
    "native": _native(ops.imtl_g_weights),
    "triton": _kernel("imtl_g_solve"),
}
MGDA = {
    "reference": ref.mgda_weights,
    "native": _native(ops.mgda_weights),
    "triton": _kernel("mgda_solve"),
}


def _gram(T: int, D: int, seed: int) -> Tensor:
    """float64 Gram matrix (positive definite for D ≥ T) of T gradients with norms over e^±2."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, D)) * np.exp(rng.uniform(-2.0, 2.0, (T, 1)))
    return torch.from_numpy(J @ J.T)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


@pytest.mark.parametrize("impl", sorted(IMTL_G))
def test_imtl_g_follows_the_constants(monkeypatch, impl: str) -> None:
    """A large shift with one Tikhonov step and no range projection biases IMTL-G's weights
    (relative bias ~ε/λ): every implementation must show the same bias."""
    G = _gram(6, 40, seed=1)
    solve = IMTL_G[impl]
    shipped = solve(G)
    torch.testing.assert_close(shipped, ref.imtl_g_weights(G), rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(SC, "PINV_REL_EPS", {torch.float32: 0.05, torch.float64: 0.05})
    monkeypatch.setattr(SC, "PINV_STEPS", 1)
    monkeypatch.setattr(SC, "PINV_PROJECTIONS", 0)
    changed, want = solve(G), ref.imtl_g_weights(G)
    assert _rel(want, shipped) > 1e-3  # the change is visible
    torch.testing.assert_close(changed, want, rtol=1e-9, atol=1e-12)


#: Changed MGDA constants: a short warm start (iterations, power iterations, step safety) and a
#: Wolfe budget of one iteration, which stop MGDA at a point fixed by those constants.
MGDA_CHANGES = [
    {"MGDA_APG_ITERS": 2, "MGDA_POWER_ITERS": 3, "MGDA_LIPSCHITZ_SAFETY": 3.0},
    {"MGDA_APG_ITERS": 2, "MGDA_POWER_ITERS": 3, "MGDA_LIPSCHITZ_SAFETY": 5.0},
    {"MGDA_APG_ITERS": 2, "MGDA_POWER_ITERS": 1, "MGDA_LIPSCHITZ_SAFETY": 3.0},
    {"MGDA_APG_ITERS": 3, "MGDA_POWER_ITERS": 3, "MGDA_LIPSCHITZ_SAFETY": 3.0},
]


@pytest.mark.parametrize("impl", sorted(MGDA))
def test_mgda_follows_the_constants(monkeypatch, impl: str) -> None:
    """Each change of :data:`MGDA_CHANGES` moves MGDA's early stop to its own point (so each
    constant matters here), and every implementation stops at the reference's point."""
    G = _gram(7, 12, seed=2)
    solve = MGDA[impl]
    shipped = solve(G)
    torch.testing.assert_close(shipped, ref.mgda_weights(G), rtol=1e-9, atol=1e-12)
    monkeypatch.setattr(SC, "mgda_budget", lambda num_tasks: 1)
    points: list[Tensor] = []
    for change in MGDA_CHANGES:
        for name, value in change.items():
            monkeypatch.setattr(SC, name, value)
        changed, want = solve(G), ref.mgda_weights(G)
        assert all(_rel(want, other) > 1e-4 for other in [shipped, *points]), change
        torch.testing.assert_close(changed, want, rtol=1e-9, atol=1e-12)
        points.append(want)
