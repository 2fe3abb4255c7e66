"""fp16 mixed precision with a gradient scaler: ``method.loss(losses, scaler=scaler)``.

The forward runs under fp16 autocast (CPU or GPU) and ``torch.amp.GradScaler`` scales the total.
Passing the scaler to ``method.loss`` (instead of ``scaler.scale(method.loss(...))``) makes the
method solve on the unscaled gradients and treat an overflowing step as the scaler does: no
exception, the step is skipped and leaves no trace in the method (docs/compile_and_amp.md).
``--overflow-every N`` forces an overflow every N steps (a huge scale for that one step, the
usual scale restored after it) to show it: the method's step count stays equal to the number of
optimizer steps taken.

    python examples/amp_fp16_scaler.py
    python examples/amp_fp16_scaler.py --method NashMTL --overflow-every 5
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _toy_data import TASKS, SharedEncoderModel, make_data

from mtl_fast.methods import registry


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="IMTLG", choices=registry.names())
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--overflow-every", type=int, default=0, help="force an overflow")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SharedEncoderModel().to(device)
    options = {"extra_pass": False} if "update" in registry.get(args.method).lifecycle else {}
    method = registry.get(args.method).build(len(TASKS), **options).to(device)
    optimizer = torch.optim.AdamW([{"params": model.parameters()}, *method.param_groups()], lr=1e-3)
    scaler = torch.amp.GradScaler(device)
    loader = DataLoader(TensorDataset(*make_data(args.samples)), args.batch_size, shuffle=True)

    skipped, steps = 0, 0
    losses: list[torch.Tensor] = []
    for epoch in range(args.epochs):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            steps += 1
            usual = scaler.get_scale() if steps > 1 else None
            forced = bool(args.overflow_every) and steps % args.overflow_every == 0 and usual
            if forced:
                scaler.update(new_scale=2.0**40)  # fp16 gradients overflow at this scale
            before = scaler.get_scale()
            with torch.autocast(device, dtype=torch.float16):
                losses = model.task_losses(x, y, method)
            optimizer.zero_grad()
            method.loss(losses, scaler=scaler).backward()  # scaled by the method: no scaler.scale
            scaler.step(optimizer)  # skips the optimizer step on Inf/NaN gradients
            scaler.update()  # ... and then backs off the scale
            skipped += scaler.get_scale() < before
            if forced:
                scaler.update(new_scale=float(usual))
        method.end_epoch()  # a no-op unless the method's lifecycle lists it
        weights = ", ".join(f"{n}={w:.3f}" for n, w in zip(TASKS, method.weights.tolist()))
        print(
            f"epoch {epoch}: weights {weights}; steps {steps}, skipped {skipped}, "
            f"method steps {method.step}"
        )
    final = {n: float(v.detach()) for n, v in zip(TASKS, losses)}
    print("final losses:", ", ".join(f"{n}={v:.4f}" for n, v in final.items()))
    return {"skipped_steps": skipped, "losses": final, "weights": method.weights_dict()}


if __name__ == "__main__":
    main()
