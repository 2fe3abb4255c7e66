"""One page per registered method (``docs/methods/<Name>.md``) and the methods index.

Generated from ``mtl_fast.methods.registry.REGISTRY`` at every build, so a method added there
appears on the site with no edit to the docs. Each page's example is run once here (its
state table comes from that run, so an example that fails fails the build) and again by
``tests/docs/test_examples.py``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from gen_common import BANNER, DOCS, fmt_ms, fmt_ratio, md_table, write_page_folder
from method_facts import MethodFacts, bibliography, describe_value, method_facts
from results_data import compare_results, train_run_for

import mtl_fast
from mtl_fast.compare.train import gradient_level
from mtl_fast.methods import registry

METHODS = DOCS / "methods"
_BANNER = BANNER.format(gen="method_pages.py")
#: State entries every method has (the base class's): described once, not per method.
COMMON_STATE = {
    "step": "training steps taken",
    "weights": "the last task weights",
    "micro_batch": "position inside `accumulate(k)`",
}


def constructor(spec: registry.MethodSpec) -> tuple[str, list[str]]:
    """(the expression that builds the method for ``T`` tasks, the import lines it needs)."""
    cls = spec.cls
    exported = getattr(mtl_fast, cls.__name__, None) is cls
    ref = f"mf.{cls.__name__}" if exported else cls.__name__
    imports = [] if exported else [f"from {cls.__module__} import {cls.__name__}"]
    params = [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.POSITIONAL_ONLY, p.KEYWORD_ONLY)
        and p.default is p.empty
    ]
    if not params:
        return f"{ref}()", imports
    if [p.name for p in params] == ["num_tasks"]:
        return f"{ref}(T)", imports
    # Other required arguments (weights, potentials, ...): the registry's constructor for T.
    imports.append("from mtl_fast.methods import registry")
    return f'registry.get("{cls.__name__}").build(T)', imports


def example_code(spec: registry.MethodSpec) -> str:
    """A complete training loop with the method: data, model, lifecycle calls, weights."""
    make, imports = constructor(spec)
    learnable = any(True for _ in spec.build(2).parameters())
    calls = spec.lifecycle
    lines = [
        "import torch",
        "import torch.nn.functional as F",
        "",
        "import mtl_fast as mf",
        *imports,
        "",
        "torch.manual_seed(0)",
        "T = 3  # three regression tasks whose targets differ in scale by 100x",
        "x = torch.randn(256, 8)",
        "y = (x @ torch.randn(8, T)) * torch.tensor([1.0, 10.0, 0.1])",
        "",
        "encoder = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU())",
        "heads = torch.nn.ModuleList(torch.nn.Linear(32, 1) for _ in range(T))",
        f"method = {make}",
    ]
    model_params = "[*encoder.parameters(), *heads.parameters()]"
    if learnable:
        lines += [
            "# The method's learnable weights get a group of their own (lr 0.01, no decay).",
            f'groups = [{{"params": {model_params}}}, *method.param_groups()]',
            "optimizer = torch.optim.Adam(groups, lr=1e-2)",
        ]
    else:
        lines.append(f"optimizer = torch.optim.Adam({model_params}, lr=1e-2)")
    lines += [
        "",
        "",
        "def task_losses(xb, yb, split=True):",
        "    z = encoder(xb)",
        "    zs = method.split(z, num_tasks=T) if split else [z] * T",
        "    return [F.mse_loss(heads[t](zs[t]).squeeze(1), yb[:, t]) for t in range(T)]",
        "",
        "",
        "for epoch in range(3):",
        "    for i in range(0, 256, 64):",
        "        xb, yb = x[i : i + 64], y[i : i + 64]",
    ]
    if gradient_level(spec.build(2)) == "params":
        # State per gradient coordinate: the shared parameters' gradients, the papers' setting
        # (at the feature level a coordinate is a sample position; the method warns there).
        lines += [
            "        losses = task_losses(xb, yb, split=False)",
            "        optimizer.zero_grad()",
            "        # per-coordinate gradient state: balance the shared parameters' gradients",
            "        mf.backward(losses, method=method, params=list(encoder.parameters()))",
        ]
    else:
        lines += [
            "        losses = task_losses(xb, yb)",
            "        optimizer.zero_grad()",
            "        method.loss(losses).backward()  # one ordinary backward",
        ]
    lines += [
        "        optimizer.step()",
    ]
    if "update" in calls:
        lines += [
            "        with torch.no_grad():  # the losses after the step, same batch",
            "            method.update(task_losses(xb, yb, split=False))",
        ]
    if "end_epoch" in calls:
        lines.append("    method.end_epoch()")
    if "observe" in calls:
        lines += [
            "    with torch.no_grad():  # per-task KPIs in [0, 1]: R² on the data, clipped",
            "        errors = task_losses(x, y, split=False)",
            "        kpis = [max(0.0, 1 - float(e / y[:, t].var())) for t, e in enumerate(errors)]",
            "    method.observe(kpis)",
        ]
    lines += [
        "",
        "print(method.weights)  # the last task weights, one per task",
        "print(method.state_dict().keys())",
    ]
    return "\n".join(lines) + "\n"


def run_example(code: str) -> dict[str, Any]:
    """Run ``code`` and return its namespace (raises whatever the example raises)."""
    import contextlib
    import io

    namespace: dict[str, Any] = {"__name__": "__docs_example__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<method example>", "exec"), namespace)
    return namespace


def fill_state(facts: MethodFacts, method: Any) -> None:
    facts.learnable = [(n, list(p.shape)) for n, p in method.named_parameters()]
    state = method.get_extra_state().get("state", {})
    facts.state = {k: describe_value(v) for k, v in state.items() if k not in COMMON_STATE}


def cost_section(name: str) -> str:
    out = []
    for device in ("cpu", "cuda"):
        run = train_run_for(name, device)
        if run is None:
            continue
        costs = run.train_costs()
        Ts = sorted(costs[name])
        rows = [
            [
                "this method",
                *(f"{fmt_ratio(costs[name][T][0])} ({fmt_ms(costs[name][T][1])})" for T in Ts),
            ]
        ]
        if "EqualWeighting" in costs:
            eq = costs["EqualWeighting"]
            rows.append(["equal weighting", *(fmt_ms(eq[T][1]) if T in eq else "—" for T in Ts)])
        src = run.path.relative_to(DOCS.parent).as_posix()
        out.append(
            f"**{'GPU' if device == 'cuda' else 'CPU'}** ({run.machine_line}; {run.date}, "
            f"`{src}`): one training step of the benchmark model, relative to equal "
            "weighting in the same run (median step time):\n\n"
            + md_table(["", *(f"T = {T}" for T in Ts)], rows, "l" + "r" * len(Ts))
        )
    rows = []
    for prob in compare_results():
        m = prob.methods.get(name)
        eq = prob.equal_ms()
        if m and not m.get("error") and m.get("ms_per_step") and eq:
            rows.append(
                [
                    prob.label,
                    f"{m['ms_per_step']:.3g} ms",
                    fmt_ratio(m["ms_per_step"] / eq),
                    f"{m['delta_mtl']:+.1f} %" if m.get("delta_mtl") is not None else "—",
                ]
            )
    if rows:
        out.append(
            "**Comparison problems** (`mtl-fast compare`, one CPU thread; see "
            "[the comparison results](../comparison.md)):\n\n"
            + md_table(["problem", "ms / step", "× equal weighting", "Δ_MTL"], rows, "lrrr")
        )
    if not out:
        return (
            "Not measured yet: no file in `benchmarks/results/` or `docs/results/` has this "
            "method. `mtl-fast bench` and `mtl-fast compare` measure every registered method.\n"
        )
    return "\n".join(out)


def page(facts: MethodFacts, code: str) -> str:
    spec = facts.spec
    rows = [
        ["class", f"{{py:class}}`{facts.qualname}`"],
        [
            "family",
            "gradient-based (weights act on the shared features' gradient, inside `split`)"
            if spec.family == "gradient"
            else "loss-based (weights multiply the losses; `split` is a no-op)",
        ],
        [
            "paper",
            "; ".join(f"{p.cited_as}: {p.reference}" for p in facts.papers)
            or "see the class documentation below",
        ],
        ["needs", facts.needs or "see the class documentation below"],
        ["extra cost per step", facts.extra_cost or "see the class documentation below"],
        ["lifecycle calls", "; ".join(facts.lifecycle_text) or "none besides `split` and `loss`"],
        [
            "learnable parameters",
            ", ".join(f"`{n}` [{'×'.join(map(str, s))}] (T = 3)" for n, s in facts.learnable)
            + " — give them to the optimizer with `method.param_groups()`"
            if facts.learnable
            else "none",
        ],
        [
            "CUDA graph capture",
            "yes" if spec.capturable else f"no: {spec.cls.cuda_graph_note or 'not yet verified'}",
        ],
    ]
    if facts.state:
        state = "; ".join(f"`{k}`: {v}" for k, v in facts.state.items())
    else:
        state = "nothing besides the common entries"
    if facts.state_note:
        state += f" ({facts.state_note.rstrip('.')})"
    rows.append(["state in `state_dict()`", state])
    return (
        _BANNER
        + f"# {spec.name}\n\n{facts.summary}\n\n"
        + md_table(["property", "value"], rows)
        + "\nEvery method also keeps the step count, the last weights and the micro-batch "
        "position of `accumulate(k)` in its state; `state_dict()` round-trips exactly and "
        "loads with `torch.load(weights_only=True)` ([checkpoints](../recipes/checkpoint.md)).\n"
        + "\n## Measured cost\n\n"
        + cost_section(spec.name)
        + "\n## Example\n\nA complete training loop on synthetic data (it runs as is; the "
        "tests run it):\n\n```python\n"
        + code
        + "```\n\n## Equation and API\n\n"
        + f"```{{eval-rst}}\n.. autoclass:: {facts.qualname}\n   :members:\n"
        + "   :inherited-members: Weighting, Module, MethodHelpers\n"
        + "   :no-index-entry:\n```\n"
    )


def index_page(all_facts: list[MethodFacts]) -> str:
    def cost(name: str, device: str) -> str:
        run = train_run_for(name, device)
        c = run.train_costs().get(name, {}) if run else {}
        return fmt_ratio(c[10][0]) if 10 in c else "—"

    rows = [
        [
            f"[{f.name}]({f.name}.md)",
            f.spec.family,
            ", ".join(p.cited_as for p in f.papers) or "—",
            f.needs or "—",
            ", ".join(f"`{c}`" for c in f.spec.lifecycle) or "—",
            cost(f.name, "cpu"),
            cost(f.name, "cuda"),
        ]
        for f in all_facts
    ]
    toc = "\n".join(f.name for f in all_facts)
    return (
        _BANNER
        + "# Methods\n\n"
        + f"The {len(all_facts)} methods of `mtl_fast.methods.registry`, loss-based first. "
        "Every one is a {py:class}`mtl_fast.Weighting` used through the same two calls, "
        "`method.split(z)` and `method.loss(losses)` ([concepts](../concepts.md)). The last "
        "two columns are the measured cost of a training step at T = 10 relative to equal "
        "weighting (the latest CPU and GPU runs of `mtl-fast bench` that measured the method; "
        "each method's page names the run, [benchmarks](../benchmarks.md)); which one to pick: "
        "[which method?](../which-method.md).\n\n"
        + md_table(
            ["method", "family", "paper", "needs", "lifecycle", "CPU step", "GPU step"],
            rows,
            "lllllrr",
        )
        + f"\n```{{toctree}}\n:hidden:\n\n{toc}\n```\n"
    )


def write_method_pages() -> list[Path]:
    papers = bibliography()
    pages = {}
    all_facts = []
    for spec in registry.REGISTRY:
        facts = method_facts(spec, papers)
        code = example_code(spec)
        namespace = run_example(code)
        fill_state(facts, namespace["method"])
        pages[spec.name] = page(facts, code)
        all_facts.append(facts)
    return write_page_folder(METHODS, pages, index_page(all_facts))
