"""Graph breaks that ``torch._dynamo.explain`` finds in a training loop with a method, per method:
in a model whose forward calls ``split`` (encoder, split, heads, losses) and in the whole step
(forward, ``method.loss``, backward, optimizer step), on the benchmark's training model (the
smoke-tier size: the count does not depend on the size).

    python benchmarks/compile_breaks.py                      # every registered method
    python benchmarks/compile_breaks.py IMTLG CVWeighting --json breaks.json

Each break is listed with the innermost frame of mtl_fast it came from (``-`` when it came from
torch itself: ``Optimizer.zero_grad``, ``Tensor.backward``). Runs against whichever mtl_fast is
importable, so the same script measures another checkout (``PYTHONPATH=that/checkout``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mtl_fast
from benchmarks.harness import workloads as wl
from mtl_fast.methods import registry

ROOT = str(Path(mtl_fast.__file__).resolve().parent)


def _where(reason: Any) -> str:
    frames = [f for f in reason.user_stack if str(Path(f.filename).resolve()).startswith(ROOT)]
    if not frames:
        return "-"
    f = frames[-1]
    return f"{Path(f.filename).name}:{f.lineno}"


def _summary(explained: Any) -> dict[str, Any]:
    return {
        "graphs": explained.graph_count,
        "breaks": explained.graph_break_count,
        "reasons": [
            {"where": _where(r), "reason": str(r.reason).splitlines()[0][:120]}
            for r in explained.break_reasons
        ],
    }


def explain(name: str, T: int = 3) -> dict[str, Any]:
    """The breaks of the model with ``split`` and of the whole step for method ``name``."""
    tier = wl.get_tier("smoke")
    setup = wl.make_train_setup(T, tier, "cpu")
    method = wl.build_method(name, T)
    opt = torch.optim.SGD(setup.parameters() + list(method.parameters()), lr=wl.TRAIN_LR)

    def forward(x: torch.Tensor) -> torch.Tensor:
        zs = method.split(setup.encoder(x), num_tasks=T)
        return torch.stack([setup.task_loss(t, setup.heads[t](zs[t])) for t in range(T)])

    def step(x: torch.Tensor) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        total = method.loss(forward(x))
        total.backward()
        opt.step()
        return total.detach()

    step(setup.x)  # one eager step: the method's state exists, as in a running loop
    torch._dynamo.reset()
    model = _summary(torch._dynamo.explain(forward)(setup.x))
    method.discard_pending()
    torch._dynamo.reset()
    whole = _summary(torch._dynamo.explain(step)(setup.x))
    torch._dynamo.reset()
    return {"method": name, "model": model, "step": whole}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("methods", nargs="*", help="default: every registered method")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    out = []
    for name in args.methods or registry.names():
        try:
            res = explain(name)
        except Exception as exc:  # a method that cannot even be explained is a result too
            res = {"method": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
        out.append(res)
        if "error" in res:
            print(f"{name:22s} error: {res['error']}")
            continue
        m, s = res["model"], res["step"]
        where = sorted({r["where"] for r in s["reasons"]})
        print(
            f"{name:22s} model: {m['graphs']} graph(s), {m['breaks']} break(s)   "
            f"step: {s['graphs']} graph(s), {s['breaks']} break(s) at {', '.join(where)}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
