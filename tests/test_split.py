"""``Weighting.split``: one ordinary backward equals the per-task reference computation."""

from __future__ import annotations

import time

import pytest
import torch
from _toy import ToyMTL, feature_gradients, split_step, toy_batch

from mtl_fast import reference
from mtl_fast.methods.cagrad import CAGrad
from mtl_fast.methods.gradnorm import GradNorm
from mtl_fast.methods.imtl import IMTL, IMTLG
from mtl_fast.methods.mgda import MGDA
from mtl_fast.methods.pcgrad import PCGrad

T = 3

METHODS = {
    "IMTLG": lambda: IMTLG(),
    "IMTL": lambda: IMTL(T),
    "MGDA": lambda: MGDA(),
    "MGDA-l2-loss+": lambda: MGDA(normalization="loss+", apply_to="normalized"),
    "GradNorm": lambda: GradNorm(T),
    "PCGrad": lambda: PCGrad(seed=0),
    "CAGrad": lambda: CAGrad(),
}


def _grads(params) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in params]


def _perturb_scales(method) -> None:
    if isinstance(method, IMTL):
        with torch.no_grad():
            method.log_scales.copy_(torch.tensor([0.3, -0.7, 1.1]))


@pytest.mark.parametrize("name", list(METHODS))
def test_split_equals_per_task_reference(name, device):
    """Encoder grads = backprop of Σ α_t g_t (per-task autograd.grad on z, the method's weights);
    head grads = those of the method's total."""
    model = ToyMTL(T, device=device)
    method = METHODS[name]().to(device)
    _perturb_scales(method)
    x, ys = toy_batch(model, device=device)
    split_step(model, method, x, ys)
    enc, heads = _grads(model.shared_parameters()), _grads(model.head_parameters())
    alpha = method.weights

    model.zero_grad(set_to_none=True)
    scales = method.scales if isinstance(method, IMTL) else None
    z, J = feature_gradients(model, x, ys)  # gradients of the RAW losses
    g = torch.einsum("t,t...->...", alpha.to(J.dtype), J)
    z.backward(g)
    for a, b in zip(enc, _grads(model.shared_parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    model.zero_grad(set_to_none=True)
    losses = model.losses(x, ys)
    c = torch.ones(T, device=device) if scales is None else scales.to(device)
    torch.autograd.backward((c * losses).sum(), inputs=model.head_parameters())
    for a, b in zip(heads, _grads(model.head_parameters())):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_imtlg_split_matches_reference_weights(device):
    model = ToyMTL(T, device=device)
    method = IMTLG().to(device)
    x, ys = toy_batch(model, device=device)
    split_step(model, method, x, ys)
    _, J = feature_gradients(model, x, ys)
    ref = reference.imtl_g_weights(reference.gram(J))
    torch.testing.assert_close(method.weights, ref, rtol=1e-5, atol=1e-7)
    assert method.weights.dtype == torch.float32
    assert method.weights.device.type == device.type


def test_one_traversal_per_head_and_encoder():
    model = ToyMTL(T)
    method = IMTLG()
    counts = {f"head{t}": 0 for t in range(T)}
    counts["encoder"] = 0

    def counter(key):
        def hook(module, grad_in, grad_out):
            counts[key] += 1

        return hook

    for t, head in enumerate(model.heads):
        head[0].register_full_backward_hook(counter(f"head{t}"))
    model.encoder[0].weight.register_hook(
        lambda g: counts.__setitem__("encoder", 1 + counts["encoder"])
    )
    x, ys = toy_batch(model)
    z = model.encoder(x)
    zs = method.split(z, num_tasks=T)
    losses = model.task_losses(zs, ys)
    total = method.loss(losses)
    total.backward()  # retain_graph=False
    assert counts == {"head0": 1, "head1": 1, "head2": 1, "encoder": 1}
    with pytest.raises(RuntimeError):  # the graph was freed: nothing retained
        total.backward()


def test_split_views_share_memory_and_plain_modes():
    model = ToyMTL(T)
    method = IMTLG()
    x, _ = toy_batch(model)
    z = model.encoder(x)
    zs = method.split(z, num_tasks=T)
    assert len(zs) == T and all(v.data_ptr() == z.data_ptr() for v in zs)
    method.discard_pending()
    method.eval()
    assert all(v is z for v in method.split(z, num_tasks=T))
    method.train()
    with torch.no_grad():
        zn = model.encoder(x)
        assert all(v is zn for v in method.split(zn, num_tasks=T))


def test_several_feature_tensors():
    """Two feature tensors: G is the Gram of their concatenation; both get Σ α_t g_t."""
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 6)
    heads = [torch.nn.Linear(6 + 3, 1) for _ in range(T)]
    x = torch.randn(8, 4)
    y = torch.randn(T, 8, 1)

    def losses_of(parts):
        return torch.stack(
            [
                (t + 1.0) * ((heads[t](torch.cat(parts[t], dim=1)) - y[t]) ** 2).mean()
                for t in range(T)
            ]
        )

    method = IMTLG()
    h = enc(x)
    a, b = h[:, :6], torch.tanh(h[:, :3])
    parts = method.split(a, b, num_tasks=T)
    assert len(parts) == T and all(len(p) == 2 for p in parts)
    method.loss(losses_of(parts)).backward()
    got = enc.weight.grad.clone()

    enc.zero_grad()
    h = enc(x)
    a, b = h[:, :6], torch.tanh(h[:, :3])
    ad, bd = a.detach().requires_grad_(), b.detach().requires_grad_()
    L = losses_of([(ad, bd)] * T)
    Ja, Jb = [], []
    for t in range(T):
        ga, gb = torch.autograd.grad(L[t], (ad, bd), retain_graph=True)
        Ja.append(ga)
        Jb.append(gb)
    J = torch.cat([torch.stack(Ja).flatten(1), torch.stack(Jb).flatten(1)], dim=1)
    alpha = reference.imtl_g_weights(reference.gram(J))
    torch.testing.assert_close(method.weights, alpha, rtol=1e-5, atol=1e-7)
    torch.autograd.backward(
        (a, b),
        (
            torch.einsum("t,t...->...", alpha, torch.stack(Ja)),
            torch.einsum("t,t...->...", alpha, torch.stack(Jb)),
        ),
    )
    torch.testing.assert_close(got, enc.weight.grad, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- errors


def test_error_wrong_number_of_losses():
    model = ToyMTL(T)
    method = IMTLG(num_tasks=T)
    x, ys = toy_batch(model)
    with pytest.raises(ValueError, match="got 2 tasks"):
        method.loss(model.losses(x, ys)[:2])


def test_error_non_scalar_losses():
    method = IMTLG(num_tasks=2)
    with pytest.raises(ValueError, match="scalar"):
        method.loss([torch.ones(3, requires_grad=True), torch.ones((), requires_grad=True)])
    with pytest.raises(ValueError, match="1-D"):
        method.loss(torch.ones(2, 2))


def test_error_features_without_grad():
    with pytest.raises(ValueError, match="does not require grad"):
        IMTLG().split(torch.randn(4, 3), num_tasks=2)


def test_split_twice_in_one_step_raises_at_the_backward():
    """Two splits in one step: the second replaces the first (an abandoned step looks the
    same), and the first one's backward, if it runs, raises instead of balancing with the
    inputs of another step."""
    model = ToyMTL(T)
    method = IMTLG()
    x, ys = toy_batch(model)
    z = model.encoder(x)
    zs1 = method.split(z, num_tasks=T)
    zs2 = method.split(z, num_tasks=T)
    l1 = model.task_losses(zs1, ys)
    l2 = model.task_losses(zs2, ys)
    with pytest.raises(RuntimeError, match="called again before this one was back-propagated"):
        method.loss(l1 + l2).backward()


def test_nan_loss_without_mask_raises_and_with_mask_is_absent():
    model = ToyMTL(T)
    x, ys = toy_batch(model)
    ys_nan = ys.clone()
    ys_nan[1, 0, 0] = float("nan")
    method = IMTLG()
    with pytest.raises(ValueError, match="task 1"):
        split_step(model, method, x, ys_nan)
    method.discard_pending()
    model.zero_grad(set_to_none=True)
    split_step(model, method, x, ys_nan, mask=[True, True, True])  # NaN + mask: absent
    assert method.weights[1] == 0
    assert model.heads[1][0].weight.grad is None  # absent: no gradient to its head
    assert all(torch.isfinite(p.grad).all() for p in model.shared_parameters())


# ------------------------------------------------------------------- precision and compile


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_feature_gradients(dtype):
    model = ToyMTL(T)
    method = IMTLG()
    x, ys = toy_batch(model)
    seen = {}

    def record(grad):
        seen["dtype"] = grad.dtype
        return grad

    with torch.autocast("cpu", dtype=dtype):
        z = model.encoder(x)
        assert z.dtype == dtype
        zs = method.split(z, num_tasks=T)
        losses = model.task_losses(zs, ys).float()
    z.register_hook(record)
    method.loss(losses).backward()
    assert seen["dtype"] == dtype
    assert method.weights.dtype == torch.float32
    ref = IMTLG()
    model32 = ToyMTL(T)
    split_step(model32, ref, x, ys)
    torch.testing.assert_close(method.weights, ref.weights, rtol=0.05, atol=0.02)


class _Compiled(torch.nn.Module):
    def __init__(self, method) -> None:
        super().__init__()
        self.model = ToyMTL(T)
        self.method = method

    def forward(self, x, ys):
        z = self.model.encoder(x)
        zs = self.method.split(z, num_tasks=T)
        return self.model.task_losses(zs, ys)


def test_torch_compile_same_result():
    """A model that calls split compiles (a graph break at the Function is allowed) and gives
    the same gradients. Uses the "aot_eager" backend: inductor's C++ compilation of even this
    tiny graph takes tens of seconds on a 2-core CPU (measured below, informative only)."""
    x, ys = toy_batch(ToyMTL(T))
    eager = _Compiled(IMTLG())
    eager.method.loss(eager(x, ys)).backward()

    torch._dynamo.reset()
    compiled_mod = _Compiled(IMTLG())
    compiled = torch.compile(compiled_mod, backend="aot_eager")
    start = time.perf_counter()
    compiled_mod.method.loss(compiled(x, ys)).backward()
    elapsed = time.perf_counter() - start
    assert elapsed < 120
    torch.testing.assert_close(compiled_mod.method.weights, eager.method.weights)
    for a, b in zip(eager.parameters(), compiled_mod.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- distributed


def _distributed_worker(rank: int, world: int, init_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(100 + rank)  # different global RNG: PCGrad seeds differ before sync
        for make in (lambda: PCGrad(), lambda: GradNorm(T), lambda: MGDA(normalization="loss")):
            model = ToyMTL(T)
            method = make()
            for step in range(2):
                x, ys = toy_batch(model, seed=10 * step + rank)  # each process its own data
                model.zero_grad(set_to_none=True)
                method.zero_grad(set_to_none=True)
                split_step(model, method, x, ys)
                gathered = [torch.zeros(T) for _ in range(world)]
                dist.all_gather(gathered, method.weights.float())
                assert torch.equal(gathered[0], gathered[1]), (type(method).__name__, gathered)
            if isinstance(method, GradNorm):
                grads = [torch.zeros(T) for _ in range(world)]
                dist.all_gather(grads, method.loss_weights.grad)
                assert torch.equal(grads[0], grads[1])
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_all_processes_get_the_same_weights(tmp_path):
    """Under torch.distributed (2 gloo processes, different data and global seeds): PCGrad's
    random orders, GradNorm's weights and their gradient, MGDA's loss normalisation agree."""
    import torch.multiprocessing as mp

    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)
