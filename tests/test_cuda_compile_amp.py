"""torch.compile and AMP on CUDA (skipped without a GPU; part of ``benchmarks/gpu_check.sh``'s
CUDA test subset): the Triton kernels behind ``split_backward``, fp16 autocast with
``GradScaler("cuda")``, and no host synchronisation in a scaled step.
"""

from __future__ import annotations

import pytest
import torch
from _toy import ToyMTL, toy_batch
from test_amp import assert_same_run, make_scaler, run
from test_compile import _assert_same_training

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

T = 3


@pytest.mark.parametrize("name", ["IMTLG", "MGDA", "CVWeighting", "NashMTL"])
def test_cuda_compiled_training_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inductor on CUDA, the whole step compiled: the eager weights up to float32 rounding."""
    import test_compile

    monkeypatch.setattr(test_compile, "ToyMTL", lambda num_tasks: ToyMTL(num_tasks, device="cuda"))
    monkeypatch.setattr(
        test_compile, "toy_batch", lambda model, seed: toy_batch(model, seed=seed, device="cuda")
    )
    _assert_same_training(name, "step", backend="inductor", rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["IMTLG", "MGDA", "NashMTL", "GradNorm", "DBMTL", "CVWeighting"])
def test_cuda_scaled_step_is_the_unscaled_step(name: str) -> None:
    scaled = run(name, make_scaler("cuda"), device="cuda")
    assert_same_run(scaled, run(name, None, device="cuda"))


@pytest.mark.parametrize("name", ["IMTLG", "MGDA", "NashMTL", "GradNorm", "DBMTL", "CVWeighting"])
def test_cuda_overflowed_step_leaves_no_trace(name: str) -> None:
    kw = {"autocast": True, "device": "cuda"}
    overflowed = run(name, make_scaler("cuda"), overflow_at=2, **kw)
    assert overflowed[2][2] == 2.0**10
    assert_same_run(overflowed, run(name, make_scaler("cuda"), drop=2, **kw))


@pytest.mark.parametrize("name", ["IMTLG", "CVWeighting"])
def test_cuda_scaled_step_does_not_synchronise(name: str) -> None:
    """With a fused optimizer (``scaler.step`` then needs no sync), the split, the scaled loss
    and its backward run under ``torch.cuda.set_sync_debug_mode("error")``: the method reads
    the scaler's verdict on the previous step through an event, never through a sync."""
    from test_amp import _build

    method = _build(name).cuda()
    model = ToyMTL(T, device="cuda")
    opt = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-3, fused=True)
    scaler = make_scaler("cuda")
    for k in range(4):
        x, ys = toy_batch(model, seed=k, device="cuda")
        if k == 2:
            scaler.update(new_scale=2.0**40)
        torch.cuda.synchronize()  # the previous step's verdict has landed: polling it is free
        torch.cuda.set_sync_debug_mode("error" if k >= 1 else 0)
        try:
            with torch.autocast("cuda", dtype=torch.float16):
                zs = method.split(model.encoder(x), num_tasks=T)
                losses = [loss.float() for loss in model.task_losses(zs, ys, stack=False)]
            opt.zero_grad()
            method.loss(losses, scaler=scaler).backward()
            scaler.step(opt)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert method.step == 3  # the overflowed step 2 was rolled back
