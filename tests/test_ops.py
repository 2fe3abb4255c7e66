"""Tests of the public Gram-space ops (``mtl_fast.gram``, ``imtl_g_weights``, ``mgda_weights``,
``combine``): backend dispatch, input validation, degenerate input on the CPU paths, and the
package layout / CLI.

The math of the ops is the reference's (tested against independent oracles in
tests/test_reference.py); the Triton kernels and the native CPU solvers are compared with the
reference in tests/kernels and tests/test_native_solvers.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mtl_fast
from mtl_fast import _backend
from mtl_fast import reference as ref

CPU = torch.device("cpu")
META = torch.device("meta")


def _jacobian(T: int, D: int, seed: int, spread: float = 2.0) -> np.ndarray:
    """float64 [T, D]: independent rows plus a shared component, norms over e^±spread."""
    rng = np.random.default_rng(seed)
    J = rng.standard_normal((T, D)) + rng.standard_normal(D)
    return J * np.exp(rng.uniform(-spread, spread, (T, 1)))


def _grads(T: int = 4, D: int = 30, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.tensor(_jacobian(T, D, seed), dtype=dtype)


def _needs_triton() -> None:
    if not _backend.triton_available():
        pytest.skip(f"Triton unavailable: {_backend.triton_import_error()}")


# ------------------------------------------------------------------------ backend dispatch


def test_resolve_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        _backend.resolve("cuda", CPU, torch.float32)
    for call in (
        lambda: mtl_fast.gram(_grads(), backend="gpu"),
        lambda: mtl_fast.combine(_grads(), torch.ones(4), backend="gpu"),
        lambda: mtl_fast.imtl_g_weights(torch.eye(3), backend="gpu"),
        lambda: mtl_fast.mgda_weights(torch.eye(3), backend="gpu"),
    ):
        with pytest.raises(ValueError, match="unknown backend 'gpu'"):
            call()


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str
)
def test_resolve_auto_and_torch(dtype: torch.dtype) -> None:
    """ "auto" on the CPU (and any non-CUDA device) is the reference; "torch" always is."""
    for device in (CPU, META):
        assert _backend.resolve("auto", device, dtype) == "torch"
        assert _backend.resolve("torch", device, dtype) == "torch"
    assert _backend.resolve("auto", CPU) == "torch"


def test_resolve_triton_float64_is_type_error(monkeypatch) -> None:
    _needs_triton()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backend.resolve("triton", CPU, torch.float32) == "triton"
    with pytest.raises(TypeError, match="use 'torch' for float64"):
        _backend.resolve("triton", CPU, torch.float64)
    with pytest.raises(TypeError, match="float64"):
        mtl_fast.gram(_grads(dtype=torch.float64), backend="triton")
    with pytest.raises(TypeError, match="float64"):
        mtl_fast.imtl_g_weights(torch.eye(3, dtype=torch.float64), backend="triton")
    with pytest.raises(TypeError, match="float64"):
        mtl_fast.mgda_weights(torch.eye(3, dtype=torch.float64), backend="triton")


@pytest.mark.parametrize("value", [None, "0", ""])
def test_resolve_triton_on_cpu_needs_interpreter(monkeypatch, value: str | None) -> None:
    _needs_triton()
    if value is None:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    else:
        monkeypatch.setenv("TRITON_INTERPRET", value)
    assert not _backend.triton_interpret()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _backend.resolve("triton", CPU, torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mtl_fast.gram(_grads(), backend="triton")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        mtl_fast.combine(_grads(), torch.ones(4), backend="triton")
    # "auto" never asks for the interpreter on the CPU.
    assert _backend.resolve("auto", CPU, torch.float32) == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_torch_backend_is_the_reference(dtype: torch.dtype) -> None:
    """backend="torch" returns the reference's results; "auto" on the CPU (the native passes when
    built, tests/kernels/test_cpu_passes_native.py) agrees to rounding."""
    J = _grads(5, 300, seed=1, dtype=dtype)
    w = torch.tensor([0.1, 0.4, 0.2, 0.0, 0.3])
    G = mtl_fast.gram(J, backend="torch")
    assert torch.equal(G, ref.gram(J))
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(mtl_fast.combine(J, w, backend="torch"), ref.combine(J, w))
    G_auto = mtl_fast.gram(J, backend="auto")
    assert G_auto.dtype == G.dtype
    torch.testing.assert_close(G_auto, G, rtol=1e-6, atol=1e-6 * float(G.abs().max()))
    c = ref.combine(J, w)
    torch.testing.assert_close(mtl_fast.combine(J, w, backend="auto"), c)
    G = ref.gram(J)
    assert torch.equal(mtl_fast.imtl_g_weights(G, backend="torch"), ref.imtl_g_weights(G))
    assert torch.equal(mtl_fast.mgda_weights(G, backend="torch"), ref.mgda_weights(G))
    for kwargs in ({"solver": "frank_wolfe"}, {"constrained": False}):
        assert torch.equal(mtl_fast.mgda_weights(G, **kwargs), ref.mgda_weights(G, **kwargs))


def test_ops_on_meta_do_not_sync() -> None:
    """Off the CPU, the ops' solves and combine only queue tensor ops (meta: any read raises)."""
    G = torch.empty(6, 6, device=META)
    for w in (mtl_fast.imtl_g_weights(G), mtl_fast.mgda_weights(G, constrained=False)):
        assert w.device == META and w.shape == (6,)
    J = torch.empty(6, 4, 5, device=META)
    out = mtl_fast.combine(J, torch.empty(6, device=META))
    assert out.device == META and out.shape == (4, 5)


# ------------------------------------------------------------------------ input validation

GRAM_FNS = {"ops": mtl_fast.gram, "reference": ref.gram}
COMBINE_FNS = {"ops": mtl_fast.combine, "reference": ref.combine}


@pytest.mark.parametrize("name", list(GRAM_FNS))
def test_gram_rejects_bad_gradients(name: str) -> None:
    gram = GRAM_FNS[name]
    a = torch.ones(5)
    cases = [
        (torch.tensor(1.0), ValueError, r"shape \[T, \.\.\.\] with T >= 1"),
        (torch.empty(0, 4), ValueError, "T >= 1"),
        (torch.empty(3, 0), ValueError, "no elements per task"),
        ([], ValueError, "empty"),
        ([torch.empty(0), torch.empty(0)], ValueError, "no elements per task"),
        ([a, torch.ones(6)], ValueError, r"grads\[1\] has shape \(6,\).*same shape"),
        ([a, torch.ones(5, 1)], ValueError, "same shape"),
        ([a, a.to(torch.bfloat16)], ValueError, r"grads\[1\] has dtype torch.bfloat16"),
        ([a, a.double()], ValueError, "one dtype"),
        ([a, torch.ones(5, device=META)], ValueError, r"grads\[1\] is on meta.*same device"),
        (torch.ones(3, 4, dtype=torch.int64), TypeError, "floating-point"),
        ([a, torch.ones(5, dtype=torch.int32)], TypeError, r"grads\[1\] must be a floating"),
        (torch.ones(3, 4, dtype=torch.complex64), TypeError, "floating-point"),
        ([a, [1.0] * 5], TypeError, r"grads\[1\] must be a Tensor"),
        (3.0, TypeError, r"Tensor \[T, \.\.\.\] or a sequence"),
    ]
    for grads, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            gram(grads)


@pytest.mark.parametrize(
    "solve",
    [mtl_fast.imtl_g_weights, mtl_fast.mgda_weights, ref.imtl_g_weights, ref.mgda_weights],
    ids=["ops.imtl_g", "ops.mgda", "ref.imtl_g", "ref.mgda"],
)
def test_solves_reject_bad_gram(solve) -> None:
    cases = [
        (torch.ones(3, 4), ValueError, r"square \[T, T\] matrix with T >= 1; got \(3, 4\)"),
        (torch.ones(3), ValueError, "square"),
        (torch.ones(2, 2, 2), ValueError, "square"),
        (torch.empty(0, 0), ValueError, "T >= 1"),
        (torch.eye(3, dtype=torch.int64), TypeError, "floating-point"),
        (np.eye(3), TypeError, r"must be a Tensor \[T, T\]"),
    ]
    for G, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            solve(G)


def test_mgda_rejects_unknown_solver() -> None:
    for solve in (mtl_fast.mgda_weights, ref.mgda_weights):
        with pytest.raises(ValueError, match="unknown MGDA solver 'wolfe'"):
            solve(torch.eye(3), solver="wolfe")


@pytest.mark.parametrize("name", list(COMBINE_FNS))
def test_combine_rejects_bad_weights_and_out(name: str) -> None:
    combine = COMBINE_FNS[name]
    J = _grads(3, 20).reshape(3, 4, 5)
    w = torch.ones(3)
    cases = [
        ({"weights": torch.ones(4)}, ValueError, r"shape \(3,\) to match 3 task gradients"),
        ({"weights": torch.ones(2)}, ValueError, r"got \(2,\)"),
        ({"weights": torch.ones(3, 1)}, ValueError, r"shape \(3,\)"),
        ({"weights": torch.ones(3, dtype=torch.int64)}, TypeError, "floating-point"),
        ({"weights": [1.0, 1.0, 1.0]}, TypeError, r"weights must be a Tensor"),
        ({"weights": torch.ones(3, device=META)}, ValueError, "weights are on meta"),
        ({"out": torch.zeros(20)}, ValueError, r"out has shape \(20,\); expected \(4, 5\)"),
        ({"out": torch.zeros(5, 4)}, ValueError, "out has shape"),
        ({"out": torch.zeros(4, 5, dtype=torch.int32)}, TypeError, "out must be a floating"),
        ({"out": torch.zeros(4, 5, device=META)}, ValueError, "out is on meta"),
        ({"out": np.zeros((4, 5))}, TypeError, "out must be a Tensor"),
    ]
    for kwargs, exc, msg in cases:
        args = {"weights": w, **kwargs}
        with pytest.raises(exc, match=msg):
            combine(J, args.pop("weights"), **args)
    with pytest.raises(ValueError, match="same shape"):
        combine([J[0], J[1].reshape(-1), J[2]], w)


@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_gram_names_nonfinite_task(backend: str, dtype: torch.dtype) -> None:
    J = _grads(5, 40, dtype=dtype)
    J[2, 11] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite .*gradient for task 2\b.*mask="):
        mtl_fast.gram(J, backend=backend)
    J[4, 0] = float("inf")
    with pytest.raises(ValueError, match=r"for tasks 2, 4\b"):
        mtl_fast.gram(list(J), backend=backend)


# ------------------------------------------------------------------------ degenerate input

#: The public solves on the CPU: "auto" (native IMTL-G / MGDA solvers) and "torch" (reference).
PUBLIC_SOLVES = {
    "imtl_g-auto": lambda G: mtl_fast.imtl_g_weights(G),
    "imtl_g-torch": lambda G: mtl_fast.imtl_g_weights(G, backend="torch"),
    "mgda-auto": lambda G: mtl_fast.mgda_weights(G),
    "mgda-torch": lambda G: mtl_fast.mgda_weights(G, backend="torch"),
    "mgda-fw": lambda G: mtl_fast.mgda_weights(G, solver="frank_wolfe"),
    "mgda-unconstrained": lambda G: mtl_fast.mgda_weights(G, constrained=False),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(PUBLIC_SOLVES))
def test_zero_gradient_gets_zero_weight(name: str, dtype: torch.dtype) -> None:
    solve = PUBLIC_SOLVES[name]
    J = _grads(5, 16, seed=3, dtype=dtype)
    J[1] = 0
    a = solve(mtl_fast.gram(J))
    assert a.dtype == dtype and a[1] == 0
    keep = [0, 2, 3, 4]
    torch.testing.assert_close(a[keep], solve(mtl_fast.gram(J[keep])), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", list(PUBLIC_SOLVES))
def test_single_task_and_all_zero(name: str, dtype: torch.dtype) -> None:
    solve = PUBLIC_SOLVES[name]
    assert solve(torch.tensor([[3.0]], dtype=dtype)).tolist() == [1.0]
    J = torch.zeros(3, 7, dtype=dtype)
    w = solve(mtl_fast.gram(J))
    assert w.dtype == dtype and torch.equal(w, torch.zeros(3, dtype=dtype))
    g = mtl_fast.combine(J, w)
    assert torch.equal(g, torch.zeros(7, dtype=dtype))


@pytest.mark.parametrize("backend", ["auto", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dependent_gradients(backend: str, dtype: torch.dtype) -> None:
    """Collinear g₂ = 3g₁: IMTL-G gives α₁ = 3α₂ (pseudo-inverse sense); duplicates split evenly;
    every weight finite."""
    base = _jacobian(2, 9, seed=4)
    J = torch.tensor(np.stack([base[0], 3 * base[0], base[1]]), dtype=dtype)
    a = mtl_fast.imtl_g_weights(mtl_fast.gram(J), backend=backend).double()
    assert torch.isfinite(a).all() and abs(float(a.sum()) - 1) <= 1e-6
    torch.testing.assert_close(a[0], 3 * a[1], rtol=1e-5, atol=0)
    Jd = torch.tensor(np.stack([base[0], base[1], base[0]]), dtype=dtype)
    a = mtl_fast.imtl_g_weights(mtl_fast.gram(Jd), backend=backend)
    torch.testing.assert_close(a[0], a[2], rtol=1e-6, atol=0)
    for solve in PUBLIC_SOLVES.values():
        assert torch.isfinite(solve(mtl_fast.gram(J))).all()
        assert torch.isfinite(solve(mtl_fast.gram(Jd))).all()


@pytest.mark.parametrize("T,D", [(6, 3), (24, 5)])
def test_more_tasks_than_dimensions(T: int, D: int) -> None:
    """T > D: finite weights, no exception; IMTL-G close to the pinv oracle β = pinv(C)1
    (float64 gradients: 1e-4 relative, the filtered pseudo-inverse's cancellation error ~u/ε;
    see tests/test_reference.py::test_more_tasks_than_dimensions)."""
    J = _jacobian(T, D, seed=T)
    G = mtl_fast.gram(torch.tensor(J))
    n = np.sqrt(np.diag(J @ J.T))
    beta = np.linalg.pinv(J @ J.T / np.outer(n, n), rcond=1e-10, hermitian=True) @ np.ones(T)
    oracle = beta / n / (beta / n).sum()
    for backend in ("auto", "torch"):
        a = mtl_fast.imtl_g_weights(G, backend=backend).numpy()
        assert np.abs(a - oracle).max() <= 1e-4 * np.abs(oracle).max()
    for solve in PUBLIC_SOLVES.values():
        w = solve(G)
        assert torch.isfinite(w).all() and abs(float(w.sum()) - 1) <= 1e-6
        w32 = solve(G.float())
        assert torch.isfinite(w32).all() and abs(float(w32.sum()) - 1) <= 1e-5


# ------------------------------------------------------------------------- gram / combine


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64], ids=str
)
def test_layouts_and_dtypes(dtype: torch.dtype) -> None:
    """A list, a stacked tensor and a transposed (non-contiguous) tensor give the same G and the
    same combination; G is fp32 (fp64 for fp64 gradients), combine keeps the gradients' dtype."""
    J = _grads(6, 2000, seed=5, dtype=dtype)
    w = torch.linspace(0.0, 1.0, 6)
    G = mtl_fast.gram(J)
    assert G.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(G, G.T) and torch.equal(G, mtl_fast.gram(J))
    c = mtl_fast.combine(J, w)
    assert c.dtype == dtype and c.shape == (2000,)
    for grads in (list(J), J.T.contiguous().T):
        torch.testing.assert_close(mtl_fast.gram(grads), G, rtol=1e-6, atol=0)
        assert torch.equal(mtl_fast.combine(grads, w), c)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_combine_out_accumulates_and_skips_zero_weight_nan(backend: str) -> None:
    J = _grads(4, 60, seed=6).reshape(4, 3, 20)
    w = torch.tensor([0.5, 0.0, 0.25, 0.25])
    out = torch.ones(3, 20)
    res = mtl_fast.combine(J, w, out=out, backend=backend)
    assert res is out
    expected = 1 + mtl_fast.combine(J, w, backend=backend)
    torch.testing.assert_close(out, expected)
    bad = J.clone()
    bad[1] = float("nan")
    g = mtl_fast.combine(list(bad), w, backend=backend)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, mtl_fast.combine(J, w, backend=backend))
    out = torch.zeros(3, 20, dtype=torch.float64)
    mtl_fast.combine(bad, w, out=out, backend=backend)
    assert torch.isfinite(out).all()


# -------------------------------------------------------------------- package layout / CLI


def _clean_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_kernels_install_as_subpackage(tmp_path: Path) -> None:
    """``kernels/`` is installed as ``mtl_fast.kernels``; there is no top-level ``kernels`` of
    ours (run outside the repository root, which would otherwise be on sys.path as the cwd).
    Another project's ``kernels`` package may be installed (Hugging Face's, which transformers
    requires and the ``hf`` extra brings): it must not hold our kernel modules."""
    code = (
        "import mtl_fast.kernels as k\n"
        "print(k.__name__)\n"
        "try:\n"
        "    import kernels\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('IMPORTED', kernels.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    name, found = done.stdout.splitlines()
    assert name == "mtl_fast.kernels"
    if found != "No module named 'kernels'":
        other = Path(found.removeprefix("IMPORTED ")).parent
        ours = Path(__file__).resolve().parents[1] / "kernels"
        assert not (other / "gram.py").exists() and other.resolve() != ours.resolve(), found


def test_cli_info_json(tmp_path: Path) -> None:
    """``mtl-fast info --json`` (the console script, else ``python -m mtl_fast.cli``) runs and
    reports the native extension."""
    script = shutil.which("mtl-fast", path=str(Path(sys.executable).parent))
    cmd = [script] if script else [sys.executable, "-m", "mtl_fast.cli"]
    done = subprocess.run(
        [*cmd, "info", "--json"], cwd=tmp_path, env=_clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["native_extension"] is True, info.get("native_error")
    assert "native_error" not in info
    assert info["mtl_fast"] == mtl_fast.__version__
    assert info["torch"] == torch.__version__


def test_auto_gram_leaves_large_t_to_the_reference(monkeypatch) -> None:
    """Above TRITON_GRAM_MAX_T the "auto" backend computes G with the reference even where the
    Triton kernel could run (CUDA); an explicit backend="triton" still gets the kernel."""
    from mtl_fast import _backend, ops
    from mtl_fast._validation import as_task_rows

    used: list[str] = []

    class FakeKernels:
        @staticmethod
        def gram_rows(rows):
            used.append("kernel")
            return torch.zeros(rows.num_tasks, rows.num_tasks)

    monkeypatch.setattr(_backend, "resolve", lambda *args, **kwargs: "triton")
    monkeypatch.setattr(ops, "_kernels", lambda: FakeKernels)
    monkeypatch.setattr(ops, "TRITON_GRAM_MAX_T", 2)
    J = torch.randn(3, 40, dtype=torch.float64).float()
    G = ops.gram_rows(as_task_rows(J), backend="auto")
    torch.testing.assert_close(G.double(), J.double() @ J.double().T, rtol=1e-5, atol=1e-6)
    assert used == []
    ops.gram_rows(as_task_rows(J[:2]), backend="auto")
    ops.gram_rows(as_task_rows(J), backend="triton")
    assert used == ["kernel", "kernel"]


def test_repository_kernels_folder_never_shadows_a_kernels_package(tmp_path: Path) -> None:
    """From the repository root, ``kernels`` is at most a namespace package (no ``__file__``,
    which tools such as transformers' availability checks treat as absent), and an installed
    package named ``kernels`` takes precedence over the folder."""
    root = Path(__file__).resolve().parents[1]
    probe = "import kernels; print(getattr(kernels, '__file__', None))"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=_clean_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = done.stdout.strip()  # an installed kernels package (transformers') wins, if any
    # never the repository's own folder (a virtual environment inside the checkout is fine)
    assert found == "None" or Path(found).resolve().parent != (root / "kernels").resolve(), found
    other = tmp_path / "site" / "kernels"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("CUDAProperties = 'the other kernels package'\n")
    env = {**_clean_env(), "PYTHONPATH": str(tmp_path / "site")}
    probe = "from kernels import CUDAProperties; print(CUDAProperties)"
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "the other kernels package"
