"""The native balanced step on the CPU (csrc/cpu_step.cpp through mtl_fast/_native_passes.py and
mtl_fast/_balance.py): ``balance_rows`` and ``solve_gram`` against the Python policy they fold
(the masks and non-finite rules of ``_balance.balance_gram``, the solves of ``mtl_fast.ops``, the
combine), and a gradient method's ``split`` step on the native path against the general one.
The native path must give the same bits: the same Gram pass, the same float32 rounding of G, the
same solves and the same combine."""

from __future__ import annotations

import pytest
import torch

import mtl_fast as mf
from mtl_fast import _native_passes, ops
from mtl_fast import _solve_constants as SC
from mtl_fast._balance import native_solver_options
from mtl_fast._validation import as_task_rows
from mtl_fast.weighting import Weighting
from tests._toy import ToyMTL, split_step, toy_batch

if not _native_passes.available():
    pytest.skip("mtl_fast._C is not built with the CPU passes", allow_module_level=True)

import mtl_fast._C as C

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def _rows(T: int, D: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = torch.exp(torch.empty(T, 1).uniform_(-2, 2, generator=g))
    return (scale * (torch.randn(T, D, generator=g) + 0.5 * torch.randn(1, D, generator=g))).to(
        dtype
    )


def _python_step(J: torch.Tensor, present: torch.Tensor | None, solver: str | None):
    """The general path: ops.gram_rows, the masks of balance_gram, the ops solve, combine."""
    rows = as_task_rows(J)
    G = ops.gram_rows(rows)
    T = G.shape[0]
    p = torch.ones(T, dtype=torch.bool) if present is None else present
    G = torch.where(p[:, None] & p[None, :], G, 0.0)
    if solver is None:
        return G, None, None
    solve = ops.imtl_g_weights if solver == "imtl_g" else ops.mgda_weights
    alpha = torch.where(G.diagonal() > 0, solve(G).to(torch.float32), 0.0)
    return G, alpha, ops.combine_rows(rows, alpha)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("solver", ["imtl_g", "mgda", None])
@pytest.mark.parametrize("T,D", [(1, 7), (3, 1000), (9, 4099)])
@pytest.mark.parametrize("masked", [False, True])
def test_balance_rows_equals_the_python_policy(dtype, solver, T, D, masked) -> None:
    J = _rows(T, D, dtype, seed=T + D)
    present = None
    if masked and T > 1:
        present = torch.ones(T, dtype=torch.bool)
        present[T // 2] = False
        J[T // 2, 3] = float("nan")  # an absent task's gradient is never looked at
    options = {} if solver is None else native_solver_options(solver, T, dtype)
    got = _native_passes.balance_rows(as_task_rows(J), present, solver, options, combine=True)
    assert not isinstance(got, _native_passes.BadStep)
    G, alpha, out = got
    want_G, want_alpha, want_out = _python_step(J, present, solver)
    assert torch.equal(G, want_G)  # the masked G, also with a solver (diagnostics read it)
    if solver is None:
        assert alpha is None and out is None
        return
    assert alpha is not None and out is not None
    assert alpha.dtype == torch.float32 and out.dtype == dtype and out.shape == (D,)
    assert torch.equal(alpha, want_alpha)
    assert torch.equal(out, want_out)


def test_nonfinite_present_task_stops_the_step() -> None:
    J = _rows(4, 500, torch.float32)
    J[2, 10] = float("inf")
    opts = native_solver_options("imtl_g", 4, torch.float32)
    bad = _native_passes.balance_rows(as_task_rows(J), None, "imtl_g", opts, combine=True)
    assert isinstance(bad, _native_passes.BadStep)
    assert bad.tasks == [2] and bad.gram_rows == []
    present = torch.tensor([True, True, False, True])
    ok = _native_passes.balance_rows(as_task_rows(J), present, "imtl_g", opts, combine=True)
    assert not isinstance(ok, _native_passes.BadStep)
    assert ok[1] is not None and ok[1][2] == 0.0


def test_solve_gram_equals_the_array_entry_points_and_checks_g() -> None:
    for dtype in (torch.float32, torch.float64):
        G = ops.gram(_rows(6, 300, torch.float64, seed=3)).to(dtype)
        a = _native_passes.solve_gram(G, "imtl_g", SC.native_imtl_g_options(dtype))
        b = C.imtl_g_solve(G.double().numpy(), **SC.native_imtl_g_options(dtype))
        assert a.dtype == dtype and torch.equal(a, torch.from_numpy(b).to(dtype))
        m = _native_passes.solve_gram(G, "mgda", SC.native_mgda_options(6))
        n = C.mgda_solve(G.double().numpy(), **SC.native_mgda_options(6))
        assert torch.equal(m, torch.from_numpy(n).to(dtype))
    G = ops.gram(_rows(3, 50, torch.float32))
    G[1, 2] = float("nan")
    with pytest.raises(ValueError, match="Gram matrix row for task 1"):
        _native_passes.solve_gram(G, "imtl_g", SC.native_imtl_g_options(G.dtype))


def test_native_entry_points_reject_bad_options() -> None:
    G = torch.eye(3)
    w = torch.empty(3)
    opts = SC.native_imtl_g_options(torch.float32)
    with pytest.raises(ValueError, match="needs the keyword rel_eps"):
        C.solve_gram(
            G.data_ptr(),
            3,
            "float32",
            "imtl_g",
            w.data_ptr(),
            "float32",
            **{**{k: v for k, v in opts.items() if k != "rel_eps"}, "extra": 1},
        )
    with pytest.raises(ValueError, match="exactly 5 keywords"):
        C.solve_gram(G.data_ptr(), 3, "float32", "imtl_g", w.data_ptr(), "float32", **opts, x=1)
    with pytest.raises(ValueError, match="solver must be"):
        C.solve_gram(G.data_ptr(), 3, "float32", "newton", w.data_ptr(), "float32")
    with pytest.raises(ValueError, match="steps must be >= 1"):
        C.solve_gram(
            G.data_ptr(), 3, "float32", "imtl_g", w.data_ptr(), "float32", **{**opts, "steps": 0}
        )
    rows = as_task_rows(torch.ones(3, 8))
    with pytest.raises(ValueError, match="takes no options"):
        _native_passes.balance_rows(rows, None, None, {"rel_eps": 1.0}, combine=False)


# --------------------------------------------------------------------------- through split


@pytest.fixture
def general_path(monkeypatch):
    """Force the general (Python) balance path of every method."""

    def use(flag: bool) -> None:
        if flag:
            monkeypatch.setattr(Weighting, "_native_step_applies", lambda self, rows: False)
        else:
            monkeypatch.undo()

    return use


METHODS = {
    "IMTLG": lambda T: mf.IMTLG(),
    "IMTL": lambda T: mf.IMTL(T),
    "MGDA": lambda T: mf.MGDA(),
    "MGDA-l2": lambda T: mf.MGDA(normalization="l2"),  # Python solve on the native masked G
    "PCGrad": lambda T: mf.PCGrad(seed=0),
}


def _run(name: str, steps: int, masks, accumulate: int = 1):
    T = 4
    model = ToyMTL(num_tasks=T, seed=1)
    method = METHODS[name](T)
    if accumulate > 1:
        method.accumulate(accumulate, weights="step")
    grads, weights = [], []
    for k in range(steps):
        x, ys = toy_batch(model, seed=k)
        model.zero_grad()
        split_step(model, method, x, ys, masks(k))
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.shared_parameters()]))
        weights.append(method.weights.clone())
    return grads, weights


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("masked", [False, True])
def test_split_native_path_equals_the_general_path(general_path, name, masked) -> None:
    masks = (lambda k: [True, k % 2 == 0, True, k % 3 != 0]) if masked else (lambda k: None)
    native = _run(name, 5, masks)
    general_path(True)
    general = _run(name, 5, masks)
    for a, b in zip(native[0] + native[1], general[0] + general[1]):
        assert torch.equal(a, b)


def test_accumulated_steps_take_the_python_solve(general_path) -> None:
    native = _run("IMTLG", 6, lambda k: None, accumulate=2)
    general_path(True)
    general = _run("IMTLG", 6, lambda k: None, accumulate=2)
    for a, b in zip(native[0] + native[1], general[0] + general[1]):
        assert torch.equal(a, b)


def test_native_path_reports_a_nonfinite_gradient_like_the_general_one(general_path) -> None:
    messages = []
    for flag in (False, True):
        general_path(flag)
        model = ToyMTL(num_tasks=3, seed=2)
        method = mf.IMTLG()
        x, ys = toy_batch(model)
        z = model.encoder(x)
        zs = method.split(z, num_tasks=3)
        zs[1] = zs[1] * float("inf")
        losses = model.task_losses(zs, ys)
        with pytest.raises(ValueError) as info:
            method.loss(losses).backward()
        messages.append(str(info.value))
    assert messages[0] == messages[1] and "task 1" in messages[0]


def test_a_subclass_overriding_gram_weights_keeps_its_solve() -> None:
    class Halved(mf.IMTLG):
        def gram_weights(self, G, inputs):
            return super().gram_weights(G, inputs) / 2

    model = ToyMTL(num_tasks=3, seed=4)
    x, ys = toy_batch(model)
    a, b = Halved(), mf.IMTLG()
    split_step(model, a, x, ys)
    split_step(model, b, x, ys)
    assert a._native_step_solver(3) is None and b._native_step_solver(3) == "imtl_g"
    torch.testing.assert_close(a.weights, b.weights / 2)


@pytest.mark.parametrize("name", ["IMTLG", "MGDA-l2"])
def test_native_path_keeps_the_diagnostics_of_the_general_path(general_path, name) -> None:
    got = []
    for flag in (False, True):
        general_path(flag)
        model = ToyMTL(num_tasks=4, seed=5)
        method = METHODS[name](4)
        x, ys = toy_batch(model)
        split_step(model, method, x, ys, [True, False, True, True])
        got.append(method.diagnostics)
    native, general = got
    assert native is not None and general is not None
    for a, b in zip(
        (native.norms, native.cosines, native.weight_entropy),
        (general.norms, general.cosines, general.weight_entropy),
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _taken(method: Weighting, monkeypatch) -> list[bool]:
    """Runs one split step; returns whether the native path was taken."""
    taken: list[bool] = []
    real = Weighting._native_step_applies

    def spy(self, rows):
        taken.append(real(self, rows))
        return taken[-1]

    monkeypatch.setattr(Weighting, "_native_step_applies", spy)
    model = ToyMTL(num_tasks=3, seed=6)
    x, ys = toy_batch(model)
    split_step(model, method, x, ys)
    return taken


def test_native_path_is_not_taken_for_row_methods_or_loss_based_diagnostics(monkeypatch) -> None:
    assert _taken(mf.IMTLG(), monkeypatch) == [True]
    monkeypatch.undo()
    for method in (mf.GradDrop(seed=0), mf.MoCo(3), mf.ExcessMTL(3)):
        assert method.needs_gradient_rows
        assert _taken(method, monkeypatch) == [False]
        monkeypatch.undo()
    assert _taken(mf.DWA(3, diagnostics=True), monkeypatch) == [False]


def test_native_path_is_not_taken_for_a_scaled_step(monkeypatch) -> None:
    method = mf.IMTLG()
    model = ToyMTL(num_tasks=3, seed=7)
    x, ys = toy_batch(model)
    taken: list[bool] = []
    real = Weighting._native_step_applies
    monkeypatch.setattr(
        Weighting, "_native_step_applies", lambda self, rows: taken.append(real(self, rows))
    )
    losses = model.task_losses(method.split(model.encoder(x), num_tasks=3), ys)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    method.loss(losses, scaler=scaler).backward()
    assert taken == [False]
