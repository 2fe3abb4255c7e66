"""Tests of ``mtl_fast.compare``: the problems, the registry, deterministic training, the report
and the ``mtl-fast compare`` command (tiny budgets: the whole file runs in seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import Tensor

import mtl_fast
from mtl_fast.compare import problems, registry, report, train
from mtl_fast.compare.problems import get_problem
from mtl_fast.compare.train import CompareConfig, TrainConfig, compare_problem, train_run

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

METHODS = ["EqualWeighting", "IMTLG"]  # one loss-based, one gradient-based (both always exist)
TINY = CompareConfig(epochs=2, max_steps=2, progress=False, timing_rounds=1, timing_steps=2)


def _finite(tree: dict) -> bool:
    return all(math.isfinite(v) for ms in tree.values() for v in ms.values())


@pytest.fixture(scope="module")
def digits_result() -> train.ProblemResult:
    return compare_problem(get_problem("digits", tiny=True), METHODS, TINY)


@pytest.mark.parametrize("name", ["digits", "denoise", "synthetic"])
def test_problem_builds_and_trains(name: str) -> None:
    problem = get_problem(name, tiny=True, num_tasks=3)
    result = compare_problem(problem, METHODS, TINY)
    assert [o.name for o in result.ran] == METHODS
    assert set(result.baseline) == set(problem.higher_is_better)
    for o in result.ran:
        assert o.metrics is not None and _finite(o.metrics)
        assert set(o.metrics) == set(problem.higher_is_better)
        assert math.isfinite(o.delta_mtl) and math.isfinite(o.rank)
        assert o.ms_per_step > 0
        assert o.runs[0].steps == 4  # 2 epochs x 2 steps
        assert all(0.0 <= k <= 1.0 for k in o.runs[0].val.kpi)
    assert result.history.methods == METHODS
    arrays = result.history.to_arrays("IMTLG")
    assert arrays["weights"].shape == (4, problem.num_tasks)
    # recorded weights are normalised to sum to 1
    assert arrays["weights"].sum(axis=1) == pytest.approx(1.0)


def test_scale_problem_reuses_baseline_and_reports_changes(digits_result) -> None:
    scale = get_problem("scale", tiny=True)
    result = compare_problem(scale, METHODS, TINY, reference=digits_result)
    assert result.baseline == digits_result.baseline  # the same single-task baseline
    changes = report.scale_changes(result)
    assert set(changes) == set(METHODS)
    for v in changes.values():
        assert set(v["changes"]) == set(scale.display_higher_is_better())
        assert math.isfinite(v["mean_abs_rel_change"])
    assert "change" in report.scale_table(result)


def test_scale_problem_multiplies_one_loss() -> None:
    digits, scale = get_problem("digits", tiny=True), get_problem("scale", tiny=True)
    batch = digits.data().train.take(slice(0, 16))
    torch.manual_seed(0)
    model = digits.build_model(range(5))
    with torch.no_grad():
        out = model(batch.inputs)
        plain = digits.scaled_losses(out, batch, range(5))
        scaled = scale.scaled_losses(out, batch, range(5))
    assert float(scaled[0]) == pytest.approx(10 * float(plain[0]))
    assert [float(x) for x in scaled[1:]] == [float(x) for x in plain[1:]]


def test_digits_losses_have_different_scales() -> None:
    problem = get_problem("digits")
    torch.manual_seed(0)
    model = problem.build_model(range(5))
    batch = problem.data().train
    with torch.no_grad():
        losses = [float(v) for v in problem.losses(model(batch.inputs), batch, range(5))]
    assert losses[4] > 50 * losses[1]  # ink (squared error) vs parity (BCE)
    d = problem.data()
    assert len(d.train) + len(d.val) + len(d.test) == 1797


def test_synthetic_targets_follow_gradnorm() -> None:
    problem = problems.SyntheticProblem(tiny=True, num_tasks=4)
    y = problem.data().train.targets["y"]
    assert y.shape == (200, 4, problem.out_dim)
    for t, sigma in enumerate(problem.sigmas):
        assert float(y[:, t].abs().max()) <= sigma + 1e-4
    assert problem.sigmas[0] == pytest.approx(1.0) and problem.sigmas[-1] == pytest.approx(100.0)


def test_training_is_deterministic() -> None:
    problem = get_problem("denoise", tiny=True)  # includes random per-batch noise
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-3, seed=3, max_steps=3)

    def run(seed: int) -> train.RunResult:
        c = TrainConfig(**{**cfg.__dict__, "seed": seed})
        return train_run(problem, [0, 1, 2], lambda: mtl_fast.IMTLG(num_tasks=3), c, label="IMTLG")

    a, b, c = run(3), run(3), run(4)
    assert a.test.metrics == b.test.metrics
    assert a.final_weights == b.final_weights
    assert a.test.metrics != c.test.metrics
    # the global RNG and the deterministic flag are restored
    state = torch.get_rng_state()
    run(3)
    assert torch.equal(state, torch.get_rng_state())
    assert not torch.are_deterministic_algorithms_enabled()


def test_compare_is_deterministic() -> None:
    problem = get_problem("digits", tiny=True)
    r1 = compare_problem(problem, ["EqualWeighting", "RLW"], TINY)
    r2 = compare_problem(problem, ["EqualWeighting", "RLW"], TINY)
    for name in r1.methods:
        assert r1.methods[name].metrics == r2.methods[name].metrics
        assert r1.methods[name].delta_mtl == r2.methods[name].delta_mtl


class _HookedWeighting(mtl_fast.EqualWeighting):
    """Equal weighting that counts the comparison's hook calls."""

    extra_pass = True
    lifecycle = ("end_epoch", "observe", "update")

    def __init__(self, num_tasks: int) -> None:
        super().__init__(num_tasks)
        self.epochs = 0
        self.accuracies: list[list[float]] = []
        self.updates: list[Tensor] = []

    def end_epoch(self) -> bool:
        self.epochs += 1
        return True

    def observe(self, metrics, *, sync=None) -> None:
        self.accuracies.append(list(metrics))

    def update(self, losses: Tensor) -> None:
        assert not losses.requires_grad
        self.updates.append(losses)


def test_hooks_are_called_each_epoch() -> None:
    problem = get_problem("digits", tiny=True)
    holder: list[_HookedWeighting] = []

    def make() -> _HookedWeighting:
        holder.append(_HookedWeighting(5))
        return holder[-1]

    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-3, max_steps=1)
    train_run(problem, range(5), make, cfg, label="hooked")
    m = holder[0]
    assert m.epochs == 3
    assert len(m.updates) == 3 and all(u.shape == (5,) for u in m.updates)
    assert len(m.accuracies) == 3
    assert all(len(a) == 5 and all(0.0 <= x <= 1.0 for x in a) for a in m.accuracies)


def test_registry_resolves_and_builds_every_available_method() -> None:
    available, missing = registry.resolve_all()
    assert "EqualWeighting" in available and "IMTLG" in available
    assert set(available) | set(missing) == set(registry.METHODS)
    ctx = registry.MethodContext(
        num_tasks=3,
        epochs=2,
        potentials=[0.9, 0.8, 0.7],
        static_weights=[1.0, 2.0, 3.0],
        task_types=["classification", "regression", "regression"],
    )
    for name in available:
        method = registry.build_method(name, ctx)
        assert isinstance(method, mtl_fast.Weighting), name


def test_registry_reads_the_method_registry() -> None:
    from mtl_fast.methods import registry as method_registry

    # every registered method is compared (a method registered later is picked up), plus SI
    assert set(registry.METHODS) == set(method_registry.names()) | {"SI"}
    assert registry.expand(["all"]) == list(registry.METHODS)
    loss, grad = registry.GROUPS["loss"], registry.GROUPS["gradient"]
    assert set(loss) | set(grad) == set(registry.METHODS) and not set(loss) & set(grad)
    assert "SI" in loss and "IMTLG" in grad
    assert registry.expand(["equal", "gradient", "EqualWeighting"]) == ["EqualWeighting", *grad]
    assert registry.expand(["published"])[:2] == ["EqualWeighting", "SI"]
    with pytest.raises(ValueError, match="'all' now means"):
        registry.expand(["extra"])


def test_registry_names_and_errors() -> None:
    assert registry.canonical_name("equal") == "EqualWeighting"
    assert registry.canonical_name("imtl-g") == "IMTLG"
    assert registry.canonical_name("Uw") == "UncertaintyWeighting"
    with pytest.raises(ValueError, match="unknown method"):
        registry.canonical_name("NoSuchMethod")

    class NeedsMore(mtl_fast.Weighting):
        def __init__(self, num_tasks: int, mystery: float) -> None:
            super().__init__(num_tasks)

    kwargs, missing = registry._constructor_kwargs(NeedsMore, {"num_tasks": 2, "seed": 1})
    assert kwargs == {"num_tasks": 2} and missing == ["mystery"]


def test_unavailable_method_is_listed_not_fatal(monkeypatch) -> None:
    real = registry.resolve

    def fake(name: str):
        if registry.canonical_name(name) == "IMTLG":
            return None, "not implemented yet"
        return real(name)

    monkeypatch.setattr(registry, "resolve", fake)
    result = compare_problem(get_problem("digits", tiny=True), METHODS, TINY)
    assert [o.name for o in result.ran] == ["EqualWeighting"]
    assert result.unavailable == {"IMTLG": "not implemented yet"}
    assert "IMTLG" in report.problem_table(result) or result.unavailable


def test_report_and_figures_are_written(tmp_path, digits_result) -> None:
    path = report.write_report([digits_result], tmp_path, command="test", seconds=1.0)
    text = path.read_text()
    for needle in ("Δ_MTL", "Acc_MTL", "avg rank", "ms/step", "EqualWeighting", "IMTLG"):
        assert needle in text
    assert (tmp_path / "digits_weights.png").stat().st_size > 1000
    assert (tmp_path / "summary.png").exists()
    data = json.loads((tmp_path / "results.json").read_text())
    assert set(data["problems"]["digits"]["methods"]) == set(METHODS)


def test_cli_quick_runs(tmp_path, capsys) -> None:
    from mtl_fast.cli import main

    out = tmp_path / "quick"
    argv = ["compare", "--quick", "--tiny", "--steps", "1", "--epochs", "1"]
    argv += ["--methods", "equal,IMTLG", "--out", str(out), "--no-progress", "--dpi", "40"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for key in ("digits", "denoise", "synthetic-T5", "scale"):
        assert f"[{key}]" in printed
    assert "Δ_MTL" in printed
    text = (out / "report.md").read_text()
    assert "`scale`" in text and "mean abs. rel. change" in text
    assert "## Overview" in text and "digits Δ_MTL" in text
    assert (out / "scale_changes.png").exists()


def test_cli_parses_and_lists(capsys) -> None:
    from mtl_fast.cli import build_parser, main

    args = build_parser().parse_args(["compare", "--problem", "digits,scale", "--seeds", "2"])
    assert args.problem == "digits,scale" and args.seeds == 2 and not args.quick
    assert main(["compare", "--list-methods"]) == 0
    assert "EqualWeighting" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["compare", "--problem", "nope", "--tiny"])


def test_interleaved_step_times() -> None:
    problem = get_problem("synthetic", tiny=True, num_tasks=3)
    cfg = TrainConfig(epochs=1, batch_size=16, lr=1e-3)
    factories = {
        "EqualWeighting": lambda: mtl_fast.EqualWeighting(num_tasks=3),
        "IMTLG": lambda: mtl_fast.IMTLG(num_tasks=3),
    }
    times = train.interleaved_step_times(problem, factories, cfg, rounds=2, steps=2)
    assert set(times) == set(factories)
    assert all(math.isfinite(t) and t > 0 for t in times.values())


def test_multitasknet_split_is_used_by_gradient_methods() -> None:
    problem = get_problem("digits", tiny=True)
    torch.manual_seed(0)
    model = problem.build_model(range(5))
    method = mtl_fast.IMTLG(num_tasks=5)
    batch = problem.data().train.take(slice(0, 8))
    losses: list[Tensor] = problem.losses(model(batch.inputs, method), batch, range(5))
    method.loss(torch.stack(losses)).backward()
    w = method.weights
    assert w.shape == (5,) and float(w.sum()) == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- SI, devices, API
def test_si_is_the_sum_of_log_losses_and_scale_invariant() -> None:
    from mtl_fast.compare.transforms import ScaleInvariant

    si = ScaleInvariant(num_tasks=3)
    losses = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    total = si.loss(losses)
    assert float(total) == pytest.approx(float(torch.log(losses.detach()).sum()))
    total.backward()
    assert losses.grad is not None
    assert losses.grad.tolist() == pytest.approx([2.0, 0.5, 0.125])  # 1 / L_t
    assert si.weights.tolist() == pytest.approx([2.0, 0.5, 0.125])
    # ×10 on one loss: the same gradient with respect to the model (d log(10 L) = d log L)
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    ScaleInvariant(num_tasks=3).loss(torch.stack([x[0] ** 2, 10 * x[1] ** 2, x[2] ** 2])).backward()
    assert x.grad is not None and x.grad.tolist() == pytest.approx([2.0, 1.0, 2 / 3])
    with pytest.raises(ValueError, match="> 0"):
        ScaleInvariant(num_tasks=2).loss(torch.tensor([1.0, 0.0]))


def test_unavailable_cuda_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="--device cpu"):
        train.resolve_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        train.resolve_device("no-such-device")
    from mtl_fast.cli import main

    with pytest.raises(SystemExit, match="cuda"):
        main(["compare", "--problem", "digits", "--tiny", "--device", "cuda", "--no-progress"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_on_cuda_matches_the_protocol() -> None:
    """--device cuda: model, method and batches on the GPU, metrics finite (runs on GPUs only)."""
    problem = get_problem("digits", tiny=True)
    cfg = CompareConfig(
        epochs=1, max_steps=2, progress=False, timing_rounds=1, timing_steps=1, device="cuda"
    )
    result = compare_problem(problem, ["EqualWeighting", "IMTLG", "FAMO"], cfg)
    assert [o.name for o in result.ran] == ["EqualWeighting", "IMTLG", "FAMO"]
    assert all(_finite(o.metrics or {}) for o in result.ran)


def test_to_device_moves_tensors_and_graph_inputs() -> None:
    split = problems.Split(torch.zeros(2, 3), {"y": torch.ones(2)})
    moved = train.to_device(split, torch.device("cpu"))
    assert moved.inputs is split.inputs  # already there: no copy
    from mtl_fast.compare.problems.qm9_data import Molecules

    mols = Molecules(*(torch.zeros(1, dtype=torch.int64) for _ in range(4)),
                     atom_ptr=torch.tensor([0, 1]), edge_ptr=torch.tensor([0, 1]))  # fmt: skip
    assert mols.to("cpu") is mols and mols.device == torch.device("cpu")


def test_reference_with_more_seeds_is_compared_seed_for_seed(digits_result) -> None:
    two = CompareConfig(
        epochs=2, max_steps=2, progress=False, timing_rounds=1, timing_steps=2, seeds=(0, 1)
    )
    digits2 = compare_problem(get_problem("digits", tiny=True), METHODS, two)
    scale = compare_problem(get_problem("scale", tiny=True), METHODS, TINY, reference=digits2)
    assert scale.baseline == digits_result.baseline  # seed 0's single-task models
    changes = report.scale_changes(scale)
    for name in METHODS:
        before = changes[name]["unscaled"]
        seed0 = problems.get_problem("digits", tiny=True).display_columns(
            digits2.methods[name].runs[0].test.metrics
        )
        assert before == pytest.approx(seed0)
    with pytest.raises(ValueError, match="do not include"):
        compare_problem(get_problem("scale", tiny=True), METHODS, two, reference=digits_result)


def test_cli_seeds_of_and_quick_note(tmp_path, capsys) -> None:
    from mtl_fast.cli import main

    out = tmp_path / "q"
    argv = ["compare", "--problem", "digits,scale", "--quick", "--tiny", "--steps", "1"]
    argv += ["--epochs", "1", "--seeds", "2", "--seeds-of", "scale=1", "--methods", "equal"]
    assert main([*argv, "--no-progress", "--dpi", "40", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "quick tier: indicative only" in printed
    text = (out / "report.md").read_text()
    assert "Quick tier: indicative only" in text
    data = json.loads((out / "results.json").read_text())
    assert data["meta"]["tier"] == "quick"
    assert data["problems"]["digits"]["train"]["seeds"] == [0, 1]
    assert data["problems"]["scale"]["train"]["seeds"] == [0]
    with pytest.raises(SystemExit, match="PROBLEM=N"):
        main(["compare", "--seeds-of", "scale", "--tiny"])


def test_python_api_run(tmp_path) -> None:
    result = mtl_fast.compare.run(
        "scale", methods="equal,SI", seeds=1, epochs=1, tiny=True, out=tmp_path / "api"
    )
    assert [o.name for o in result.ran] == ["EqualWeighting", "SI"]
    assert result.reference is not None and result.reference.problem.key == "digits"
    assert (tmp_path / "api" / "report.md").exists()
    with pytest.raises(TypeError, match="Problem instance"):
        mtl_fast.compare.run(3.0)  # type: ignore[arg-type]


def test_gradient_level_of_each_method() -> None:
    T = 3
    assert train.gradient_level(mtl_fast.EqualWeighting(T)) == "loss"
    assert train.gradient_level(mtl_fast.IMTLG()) == "features"
    for m in (mtl_fast.methods.DBMTL(T), mtl_fast.methods.MoCo(T), mtl_fast.methods.ExcessMTL(T)):
        assert train.gradient_level(m) == "params"
        # a model without an ``encoder`` (a user's own) has no shared parameters to name
        assert train.gradient_level(m, torch.nn.Linear(2, 2)) == "features"
    assert train.gradient_level(mtl_fast.methods.DBMTL(T, ema="norm")) == "features"
    assert train.gradient_level(mtl_fast.methods.GradDrop(T)) == "features"  # acts on features


def test_row_state_methods_train_on_the_encoder_parameters(monkeypatch) -> None:
    problem = get_problem("digits", tiny=True)
    cfg = TrainConfig(epochs=1, batch_size=32, lr=1e-3, seed=0, max_steps=3)
    seen: list[int] = []
    real = train.mtl_backward

    def spy(losses, *, method, params):
        seen.append(len(params))
        return real(losses, method=method, params=params)

    monkeypatch.setattr(train, "mtl_backward", spy)
    split_calls: list[int] = []
    monkeypatch.setattr(
        mtl_fast.methods.MoCo, "split", lambda self, z, **kw: split_calls.append(1) or [z] * 5
    )
    T = problem.num_tasks
    run = train_run(problem, list(range(T)), lambda: mtl_fast.methods.MoCo(T), cfg, label="MoCo")
    n_encoder = len(list(problem.build_model(list(range(T))).encoder.parameters()))
    assert seen == [n_encoder] * run.steps and not split_calls
    assert _finite(run.test.metrics)


def test_compose_is_compared_as_imtl() -> None:
    problem = get_problem("digits", tiny=True)
    result = compare_problem(problem, ["Compose", "IMTL"], TINY)
    a, b = result.methods["Compose"], result.methods["IMTL"]
    assert a.ok and b.ok
    for ra, rb in zip(a.runs, b.runs):
        for task, ms in ra.test.metrics.items():
            for k, v in ms.items():
                assert v == pytest.approx(rb.test.metrics[task][k], rel=1e-4, abs=1e-6)


def test_figures_are_palette_pngs(tmp_path) -> None:
    from matplotlib.figure import Figure
    from PIL import Image

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot(range(100), [i % 7 for i in range(100)])
    path = tmp_path / "f.png"
    report.save_png(fig, path, dpi=150)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "P" and im.size == (300, 300)
        assert len(im.getcolors() or []) <= report.PNG_COLOURS


def test_scales_figure_axis_ignores_an_outlier_series(tmp_path, digits_result) -> None:
    import copy

    import numpy as np

    from mtl_fast.history import WeightHistory

    T = digits_result.problem.num_tasks
    history = WeightHistory(list(digits_result.problem.task_names))
    rng = np.random.default_rng(0)
    for method in ("A", "B"):
        for step in range(200):
            losses = torch.tensor(10 ** rng.uniform(-2, 0, T))
            weights = torch.ones(T) / T
            if method == "B" and step < 3:  # w·L collapsing early (MoCo-like), and a spike
                weights[0] = 1e-40
                losses[1] = 1e8
            history.record(method, weights, losses, step=step)
    result = copy.copy(digits_result)
    result.history = history
    path = tmp_path / "s.png"
    limits = report._small_multiples(result, "scales", path, dpi=40)
    assert path.stat().st_size > 1000
    # w·L = L / T in [1e-2, 1] / T: the 1e-40 and 1e8 values lie outside the axis
    assert limits is not None and 1e-4 < limits[0] < 2e-3 and 0.2 < limits[1] < 1
    # without outliers the axis spans the data (plus a margin)
    values = [history.to_arrays(m)["scales"][3:] for m in ("A", "B")]
    lo, hi = report.scale_axis_limits(values)
    assert lo < min(v.min() for v in values) and hi > max(v.max() for v in values)
    assert report.scale_axis_limits([np.zeros((4, 2)), np.full(3, np.nan)]) is None
    assert report._small_multiples(result, "weights", tmp_path / "w.png", dpi=40) is None
