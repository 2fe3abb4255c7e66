"""Hundreds to thousands of tasks on one ``mf.MultiTaskLinear`` head: does balancing pay?

Two problems whose tasks genuinely differ in scale and difficulty (unlike balanced multi-label
data, where equal weighting is already fair):

* ``gradnorm`` — Chen et al. 2018's synthetic regression protocol (§5.1) at T = 1000:
  f_t(x) = σ_t tanh((B + ε_t) x), x ∈ R^250, k = 4 outputs per task, σ_t log-spaced from 1 to
  100, so the squared-error losses span four orders of magnitude (the protocol of
  ``mtl-fast compare --problem synthetic``, with T in the thousands).
* ``digits`` — scikit-learn's 8×8 digits with heavy input noise: every non-constant pixel of
  the clean image is a regression task (squared error in pixel units 0..16) beside the 10
  one-vs-rest digit classes (binary cross-entropy): ~70 tasks whose losses differ ~100× in
  scale and whose difficulty ranges from near-empty border pixels to the digit classes.

Every method trains its own copy of the same initial model on the same batches, in lockstep
(one step of each method in turn, so machine load affects all alike); the step times are the
medians. Per task the test metric is a *normalised error*: MSE / Var(target) for a regression
task, 2 × balanced error for a class (1 = a constant predictor or chance, 0 = perfect). The
script prints the mean and the worst task, the step time against equal weighting, and the best
loss-based method (chosen on the validation split, reported on the test split), then says
whether the gradient balancer beat both.

    python examples/many_tasks.py                        # both problems, a few minutes on a CPU
    python examples/many_tasks.py --problem gradnorm --tasks 2000 --methods IMTLG,MGDA
    python examples/many_tasks.py --quick                # small T and few steps (the test)
    python examples/many_tasks.py --json out.json        # the results as JSON (docs/results)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import mtl_fast as mf
from mtl_fast.compare import registry

#: the loss-based methods the best one is chosen from (all need only the losses per step)
LOSS_BASED = ("GLS", "SI", "UncertaintyWeighting", "IMTLL", "CVWeighting", "FAMO")
#: the gradient balancers run by default (``--methods`` adds more, e.g. MGDA, NashMTL)
GRADIENT = ("IMTLG",)


# --------------------------------------------------------------------------- problems
@dataclass
class TaskData:
    """Inputs, targets [N, T, k] (regression) or labels [N, T] (classes), per split."""

    name: str
    x: dict[str, Tensor]
    y: dict[str, Tensor]
    kinds: list[str]  # "regression" / "classification" per task
    k: int  # outputs per task
    note: str
    groups: dict[str, list[int]] = field(default_factory=dict)

    @property
    def num_tasks(self) -> int:
        return len(self.kinds)


def gradnorm_problem(num_tasks: int, k: int, gen: torch.Generator) -> TaskData:
    """Chen et al. 2018 §5.1 with T tasks, k outputs each, σ_t log-spaced 1..100."""
    d = 250
    B = torch.randn(k, d, generator=gen) * math.sqrt(10.0)
    eps = torch.randn(num_tasks, k, d, generator=gen) * math.sqrt(3.5)
    sigma = torch.from_numpy(np.geomspace(1.0, 100.0, num_tasks)).float()
    scale = 1.0 / math.sqrt(d * 13.5)  # the tanh argument has unit variance

    def make(n: int) -> tuple[Tensor, Tensor]:
        x = torch.randn(n, d, generator=gen)
        arg = torch.einsum("tkd,nd->ntk", B + eps, x) * scale
        return x, torch.tanh(arg) * sigma[None, :, None]

    splits = {"train": make(4000), "val": make(500), "test": make(1000)}
    third = num_tasks // 3
    return TaskData(
        "gradnorm",
        {s: v[0] for s, v in splits.items()},
        {s: v[1] for s, v in splits.items()},
        ["regression"] * num_tasks,
        k,
        f"T = {num_tasks} regressions, k = {k} outputs each, σ_t from 1 to 100",
        {"low σ": list(range(third)), "high σ": list(range(num_tasks - third, num_tasks))},
    )


def digits_problem(gen: torch.Generator, noise: float = 0.5) -> TaskData:
    """Noisy 8×8 digits → every non-constant clean pixel (regression) + 10 one-vs-rest classes."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = torch.from_numpy(bunch.data).float()  # [N, 64], 0..16
    labels = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(labels), generator=gen)
    parts = {"train": order[:1200], "val": order[1200:1450], "test": order[1450:]}
    keep = pixels[parts["train"]].std(0) >= 1.0  # pixels that vary (units 0..16)
    noisy = (pixels / 16.0 + noise * torch.randn(pixels.shape, generator=gen)).clamp(0.0, 1.0)
    ovr = F.one_hot(labels, 10).float()
    P = int(keep.sum())
    x = {s: noisy[i] for s, i in parts.items()}
    y = {s: torch.cat([pixels[i][:, keep], ovr[i]], dim=1).unsqueeze(-1) for s, i in parts.items()}
    return TaskData(
        "digits",
        x,
        y,
        ["regression"] * P + ["classification"] * 10,
        1,
        f"T = {P + 10}: {P} pixel regressions (MSE, units 0..16; pixels with a training std "
        f"≥ 1) + 10 one-vs-rest classes (BCE), input noise σ = {noise}",
        {"pixels": list(range(P)), "classes": list(range(P, P + 10))},
    )


# --------------------------------------------------------------------------- model and losses
class Model(nn.Module):
    def __init__(self, d_in: int, hidden: int, data: TaskData, method: mf.Weighting) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = mf.MultiTaskLinear(hidden, data.num_tasks, method=method,
                                       outputs_per_task=data.k)  # fmt: skip
        self.k = data.k

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x)).reshape(x.shape[0], -1, self.k)  # [B, T, k]


def task_losses(out: Tensor, y: Tensor, is_class: Tensor) -> Tensor:
    """[T]: mean squared error for regressions, binary cross-entropy for classes."""
    mse = ((out - y) ** 2).mean(dim=(0, 2))
    bce = F.binary_cross_entropy_with_logits(out, y, reduction="none").mean(dim=(0, 2))
    return torch.where(is_class, bce, mse)


@torch.no_grad()
def normalised_errors(model: Model, data: TaskData, split: str) -> Tensor:
    """[T] normalised errors: MSE / Var(y_train) (regression), 2 × balanced error (classes)."""
    out = model(data.x[split])
    y = data.y[split]
    train_var = data.y["train"].var(0, unbiased=False).mean(-1).clamp_min(1e-12)  # [T]
    errors = []
    for t, kind in enumerate(data.kinds):
        if kind == "regression":
            var = train_var[t]
            errors.append(float(((out[:, t] - y[:, t]) ** 2).mean() / var))
        else:
            pred, gt = out[:, t, 0] > 0, y[:, t, 0] > 0.5
            tpr = (pred & gt).sum() / gt.sum().clamp_min(1)
            tnr = (~pred & ~gt).sum() / (~gt).sum().clamp_min(1)
            errors.append(float(2.0 * (1.0 - (tpr + tnr) / 2.0)))
    return torch.tensor(errors)


# --------------------------------------------------------------------------- training
@dataclass
class Run:
    name: str
    method: mf.Weighting
    model: Model
    opt: torch.optim.Optimizer
    times: list[float] = field(default_factory=list)


def build(name: str, data: TaskData, hidden: int, init: dict[str, Tensor], lr: float, seed: int):
    ctx = registry.MethodContext(num_tasks=data.num_tasks, seed=seed, task_types=data.kinds)
    torch.manual_seed(seed)
    method = registry.build_method(name, ctx)
    model = Model(data.x["train"].shape[1], hidden, data, method)
    model.load_state_dict(init)
    groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": lr}]
    if list(method.parameters()):
        groups += method.param_groups()
    return Run(name, method, model, torch.optim.Adam(groups))


def train(runs: list[Run], data: TaskData, steps: int, batch: int, seed: int) -> None:
    """Every run on the same batches, one step of each in turn."""
    is_class = torch.tensor([k == "classification" for k in data.kinds])
    x, y = data.x["train"], data.y["train"]
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        xb, yb = x[idx], y[idx]
        for r in runs:
            t0 = time.perf_counter()
            r.opt.zero_grad(set_to_none=True)
            r.method.loss(task_losses(r.model(xb), yb, is_class)).backward()
            r.opt.step()
            if "update" in r.method.lifecycle and getattr(r.method, "extra_pass", False):
                with torch.no_grad():  # FAMO: the losses after the step, same batch
                    r.method.update(task_losses(r.model(xb), yb, is_class))
            r.times.append(time.perf_counter() - t0)


def summarise(r: Run, data: TaskData) -> dict[str, Any]:
    test = normalised_errors(r.model, data, "test")
    val = normalised_errors(r.model, data, "val")
    steady = r.times[2:] if len(r.times) > 4 else r.times
    out: dict[str, Any] = {
        "family": registry.family(r.name),
        "ms_per_step": 1e3 * statistics.median(steady),
        "test_mean": float(test.mean()),
        "test_worst": float(test.max()),
        "val_mean": float(val.mean()),
    }
    for g, idx in data.groups.items():
        out[f"test_mean[{g}]"] = float(test[idx].mean())
        out[f"test_worst[{g}]"] = float(test[idx].max())
    return out


def run_problem(data: TaskData, methods: list[str], args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(args.seed + 1)
    init = Model(data.x["train"].shape[1], args.hidden, data, mf.EqualWeighting()).state_dict()
    runs = [build(n, data, args.hidden, init, args.lr, args.seed) for n in methods]
    start = time.perf_counter()
    train(runs, data, args.steps, args.batch, args.seed + 2)
    rows = {r.name: summarise(r, data) for r in runs}
    loss_based = [n for n in rows if n in LOSS_BASED]
    best_loss = min(loss_based, key=lambda n: rows[n]["val_mean"]) if loss_based else None
    return {
        "problem": data.name,
        "description": data.note,
        "num_tasks": data.num_tasks,
        "steps": args.steps,
        "batch": args.batch,
        "hidden": args.hidden,
        "seconds": time.perf_counter() - start,
        "best_loss_based": best_loss,
        "methods": rows,
    }


# --------------------------------------------------------------------------- report
def report(res: dict[str, Any]) -> list[str]:
    rows, best = res["methods"], res["best_loss_based"]
    eq = rows["EqualWeighting"]
    groups = [k[len("test_mean[") : -1] for k in next(iter(rows.values())) if "test_mean[" in k]
    lines = [f"\n== {res['problem']}: {res['description']} ({res['steps']} steps, batch "
             f"{res['batch']}, {res['seconds']:.0f} s)", ""]  # fmt: skip
    head = f"{'method':>22} {'mean':>7} {'worst':>7}"
    for g in groups:
        head += f" {'mean ' + g:>14} {'worst ' + g:>14}"
    lines.append(head + f" {'ms/step':>8} {'× equal':>8}")
    for name, r in rows.items():
        tag = " (best loss)" if name == best else ""
        line = f"{name + tag:>22} {r['test_mean']:7.3f} {r['test_worst']:7.3f}"
        for g in groups:
            line += f" {r[f'test_mean[{g}]']:14.3f} {r[f'test_worst[{g}]']:14.3f}"
        ratio = r["ms_per_step"] / eq["ms_per_step"]
        lines.append(line + f" {r['ms_per_step']:8.2f} {ratio:8.2f}")
    lines.append("")
    lines.append("normalised test error per task (1 = constant predictor / chance, 0 = perfect);")
    lines.append("the best loss-based method is chosen on the validation split.")
    for name, r in rows.items():
        if r["family"] != "gradient" or best is None:
            continue
        b = rows[best]
        verdict = []
        for ref_name, ref in (("equal weighting", eq), (best, b)):
            dm = r["test_mean"] - ref["test_mean"]
            dw = r["test_worst"] - ref["test_worst"]
            cost = r["ms_per_step"] / ref["ms_per_step"]
            verdict.append(
                f"vs {ref_name}: mean {dm:+.3f}, worst {dw:+.3f}, {cost:.2f}× the step time"
            )
        pays = r["test_mean"] < b["test_mean"] and r["test_worst"] < b["test_worst"]
        lines.append(f"{name}: " + "; ".join(verdict))
        lines.append(
            f"  -> {'balancing pays here' if pays else 'balancing does not pay here'}: "
            f"{name} {'beats' if pays else 'does not beat'} {best} on both the mean and the "
            "worst task"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem", choices=("gradnorm", "digits", "both"), default="both")
    p.add_argument("--tasks", type=int, default=1000, help="T of gradnorm (default 1000)")
    p.add_argument("--outputs", type=int, default=4, help="outputs per gradnorm task (default 4)")
    p.add_argument("--steps", type=int, default=None, help="steps (default 600; --quick 15)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", type=int, default=128, help="feature width C")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, every method (default 3e-3)")
    p.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, EqualWeighting always included (default: {', '.join(LOSS_BASED)}"
        f", {', '.join(GRADIENT)})",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="T = 40 and 15 steps (seconds)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: PyTorch's default)")
    args = p.parse_args(argv)
    if args.steps is None:
        args.steps = 15 if args.quick else 600
    if args.quick:
        args.tasks = min(args.tasks, 40)
    if args.steps < 1 or args.tasks < 2:
        p.error("--steps must be ≥ 1 and --tasks ≥ 2")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    chosen = list(LOSS_BASED + GRADIENT) if args.methods is None else args.methods.split(",")
    methods = registry.expand(["EqualWeighting", *chosen])
    gen = torch.Generator().manual_seed(args.seed)
    problems = []
    if args.problem in ("gradnorm", "both"):
        problems.append(gradnorm_problem(args.tasks, args.outputs, gen))
    if args.problem in ("digits", "both"):
        problems.append(digits_problem(gen))
    print(f"methods: {', '.join(methods)}; {torch.get_num_threads()} thread(s)")
    results = {"argv": argv, "threads": torch.get_num_threads(), "problems": []}
    for data in problems:
        res = run_problem(data, methods, args)
        results["problems"].append(res)
        print("\n".join(report(res)), flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
