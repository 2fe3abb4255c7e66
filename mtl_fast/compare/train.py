"""Deterministic training of one model per method, and the comparison over methods and seeds.

:func:`train_run` trains one model with one weighting method:

* seeded: ``torch.manual_seed(seed)`` right before the model is built (every method starts from
  the same initialisation), a ``torch.Generator`` seeded the same way for the batch order and any
  data augmentation, the method built inside the same seeded scope;
  ``torch.use_deterministic_algorithms(True)`` for the duration (restored afterwards, as is the
  global RNG state): two runs with the same seed give identical metrics;
* one Adam optimizer over the model's and the method's parameters (IMTL-L / IMTL scales,
  Kendall's log-variances, GradNorm's weights); the method's parameters have their own
  learning rate ``method_lr`` (default ``Weighting.default_lr`` = 0.01: Adam moves a log-scale
  by about that much per step, so it settles within the few hundred steps of this budget
  rather than the 10⁵ of the papers; docs/pitfalls.md has the measurement);
* the ordinary loop of docs/design.md: ``zs = method.split(z)``, T losses,
  ``method.loss(losses).backward()``, ``optimizer.step()``; except for the methods that keep
  per-element state of the gradient rows across steps (:func:`gradient_level` is
  ``"params"``: DB-MTL's gradient EMA, MoCo's tracked gradients, ExcessMTL's accumulated
  squares), which balance the shared encoder's parameter gradients through
  ``mtl_fast.backward(losses, method=..., params=encoder.parameters())``, their papers'
  setting: at the feature level their state would be indexed by batch position, and with
  reshuffled batches it would mix the gradients of different samples (docs/compare.md);
* the method's hooks when it has them: ``end_period()`` / ``end_epoch()`` after every epoch
  (LSB, DWA / STCH), ``update_accuracy(kpi)`` after every epoch with the validation KPIs in
  [0, 1] of :meth:`Problem.evaluate` (AMTL, DTP), and ``update(losses)`` after every optimizer
  step with the losses recomputed on the same batch, for methods with ``extra_pass=True``
  (FAMO; the extra forward pass is part of the timed step);
* a :class:`~mtl_fast.history.WeightHistory` record per step: the weights normalised to sum to 1
  (methods use different conventions: Σw = 1, Σw = T, ...) and the losses the method sees;
* the wall time of every step (forward, backward and optimizer step; not the batch slicing):
  the median is reported.

:func:`compare_problem` trains the single-task baselines and every method for every seed and
aggregates metrics, Δ_MTL, Acc_MTL, average rank, time per step (and win rates where the problem
gives per-sample metrics).
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mtl_fast import metrics as mtl_metrics
from mtl_fast.compare import registry
from mtl_fast.compare.problems import Evaluation, MetricTree, Problem, Split
from mtl_fast.functional import backward as mtl_backward
from mtl_fast.history import WeightHistory
from mtl_fast.methods import EqualWeighting
from mtl_fast.weighting import Weighting

__all__ = [
    "CompareConfig",
    "MethodOutcome",
    "ProblemResult",
    "RunResult",
    "TrainConfig",
    "compare_problem",
    "deterministic",
    "gradient_level",
    "resolve_device",
    "to_device",
    "train_run",
]


@dataclass
class TrainConfig:
    """Budget and optimisation settings of one training run.

    Attributes:
        epochs: passes over the training split.
        batch_size: mini-batch size (the last incomplete batch of an epoch is dropped).
        lr: Adam learning rate of the model.
        seed: seeds the initialisation, the batch order, the augmentation and the method.
        max_steps: optional cap on the steps per epoch (tests).
        method_lr: Adam learning rate of the method's own parameters.
        device: where the model, the method and each batch live (``"cpu"``, ``"cuda"``, ...);
            the data stay on the CPU and every batch is moved there after slicing (and the
            problem's augmentation, drawn on the CPU: the random stream is the same on every
            device).
    """

    epochs: int
    batch_size: int
    lr: float
    seed: int = 0
    max_steps: int | None = None
    method_lr: float = Weighting.default_lr
    device: str = "cpu"


@dataclass
class RunResult:
    """One trained model.

    Attributes:
        label: the method name, or ``single:<tasks>`` for a baseline.
        tasks: the task indices trained.
        seed: the seed.
        test: test-split evaluation (the reported metrics).
        val: validation-split evaluation at the end of training.
        steps: optimizer steps taken.
        ms_per_step: median wall time of a training step, milliseconds.
        seconds: wall time of the whole run (including evaluations).
        final_weights: the method's last weights (normalised to sum to 1).
    """

    label: str
    tasks: list[int]
    seed: int
    test: Evaluation
    val: Evaluation
    steps: int
    ms_per_step: float
    seconds: float
    final_weights: list[float]


@contextlib.contextmanager
def deterministic(seed: int, threads: int | None = 1) -> Iterator[None]:
    """Seed torch's global RNG, enable deterministic algorithms and (by default) use one CPU
    thread; restore all three on exit.

    One thread: the models are tiny (threads do not pay off), timings are far less noisy on a
    shared machine, and CPU reductions do not depend on the thread count.
    """
    rng = torch.get_rng_state()
    was_det = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_det, warn_only=was_warn)
        torch.set_num_threads(was_threads)
        torch.set_rng_state(rng)


def gradient_level(method: nn.Module, model: nn.Module | None = None) -> str:
    """Where ``method`` balances the task gradients in the comparison: ``"features"`` (``split``
    on the shared features, the default), ``"params"`` (``mtl_fast.backward(params=)`` on the
    shared encoder's parameters) for a gradient method that keeps per-element state of the
    gradient rows across steps (``needs_gradient_rows`` without ``needs_features``: DB-MTL with
    ``ema="gradient"``, MoCo, ExcessMTL), or ``"loss"`` for a loss-based method.

    ``model`` (optional): a model without an ``encoder`` attribute (a user's problem) has no
    shared parameters to name, so such a method falls back to ``"features"``.
    """
    if not getattr(method, "gradient_based", False):
        return "loss"
    rows = bool(getattr(method, "needs_gradient_rows", False))
    if rows and not getattr(method, "needs_features", False):
        if model is None or isinstance(getattr(model, "encoder", None), nn.Module):
            return "params"
    return "features"


def _backward_step(
    problem: Problem,
    model: nn.Module,
    method: nn.Module,
    batch: Split,
    tasks: Sequence[int],
    level: str,
) -> torch.Tensor:
    """Forward, the method's weighting and the backward pass of one step; the T losses."""
    if level == "params":
        losses = torch.stack(problem.scaled_losses(model(batch.inputs), batch, tasks))
        mtl_backward(losses, method=method, params=list(model.encoder.parameters()))
        return losses
    outputs = model(batch.inputs, method)
    losses = torch.stack(problem.scaled_losses(outputs, batch, tasks))
    method.loss(losses).backward()
    return losses


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    w = weights.detach().to(torch.float64).reshape(-1)
    s = w.sum()
    return w / s if bool(torch.isfinite(s)) and float(s) > 0 else w


def train_run(
    problem: Problem,
    tasks: Sequence[int],
    make_method: Callable[[], nn.Module],
    config: TrainConfig,
    *,
    label: str,
    history: WeightHistory | None = None,
    on_epoch: Callable[[], None] | None = None,
) -> RunResult:
    """Train one model on ``tasks`` with the method ``make_method()`` builds; evaluate it.

    Args:
        problem: the problem (data, model, losses, metrics).
        tasks: the task indices (all T for a method, one for a single-task baseline).
        make_method: builds the weighting method (called inside the seeded scope).
        config: budget, learning rate, seed.
        label: the name recorded in ``history`` and in the result.
        history: records the normalised weights and the losses at every step.
        on_epoch: called after every epoch (progress bars).

    Raises:
        ValueError: propagated from the method, e.g. a non-finite loss (a diverged run).
    """
    tasks = list(tasks)
    data = problem.data()
    device = resolve_device(config.device)
    val_split, test_split = to_device(data.val, device), to_device(data.test, device)
    start = time.perf_counter()
    with deterministic(config.seed):
        # built on the CPU inside the seeded scope, then moved: the same initialisation on
        # every device
        model = problem.build_model(tasks).to(device)
        method = make_method().to(device)
        level = gradient_level(method, model)
        groups: list[dict[str, Any]] = [{"params": list(model.parameters()), "lr": config.lr}]
        extra = [p for p in method.parameters() if p.requires_grad]
        if extra:
            groups.append({"params": extra, "lr": config.method_lr})
        optimizer = torch.optim.Adam(groups)
        gen = torch.Generator().manual_seed(config.seed)
        train = data.train
        n = len(train)
        bs = min(config.batch_size, n)
        steps_per_epoch = n // bs
        if config.max_steps is not None:
            steps_per_epoch = min(steps_per_epoch, config.max_steps)
        times: list[float] = []
        step = 0
        model.train()
        method.train()
        for _epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            for i in range(steps_per_epoch):
                batch = problem.train_batch(train, perm[i * bs : (i + 1) * bs], gen)
                batch = to_device(batch, device)
                _sync(device)
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                losses = _backward_step(problem, model, method, batch, tasks, level)
                optimizer.step()
                _post_step(problem, model, method, batch, tasks)
                _sync(device)
                times.append(time.perf_counter() - t0)
                if history is not None:
                    history.record(label, _normalised(method.weights), losses.detach(), step=step)
                step += 1
            method.end_epoch()
            if "observe" in _lifecycle(method):
                model.eval()
                ev = problem.evaluate(model, val_split, tasks)
                method.observe([float(k) for k in ev.kpi])
                model.train()
            if on_epoch is not None:
                on_epoch()
        model.eval()
        test = problem.evaluate(model, test_split, tasks)
        val = problem.evaluate(model, val_split, tasks)
        weights = _normalised(method.weights).tolist()
    return RunResult(
        label=label,
        tasks=tasks,
        seed=config.seed,
        test=test,
        val=val,
        steps=step,
        ms_per_step=1e3 * statistics.median(times) if times else float("nan"),
        seconds=time.perf_counter() - start,
        final_weights=[float(w) for w in weights],
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a :class:`torch.device`, checked to be usable.

    Raises:
        ValueError: an unknown device string, or CUDA asked for where it is not available (the
            message names the fix).
    """
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but torch.cuda.is_available() is False (torch "
            f"{torch.__version__}); install a CUDA build of torch or use --device cpu"
        )
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def to_device(split: Split, device: torch.device) -> Split:
    """``split`` with its inputs and targets on ``device`` (itself when already there).

    Inputs may be a tensor or any object with a ``to(device)`` method (qm9's graphs)."""
    inputs = split.inputs
    moved = inputs.to(device) if hasattr(inputs, "to") else inputs
    targets = {k: v.to(device) for k, v in split.targets.items()}
    return Split(moved, targets)


def _sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that wall times cover the step."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _lifecycle(method: nn.Module) -> tuple[str, ...]:
    """The lifecycle calls ``method``'s class declares (:attr:`mtl_fast.Weighting.lifecycle`)."""
    return tuple(getattr(method, "lifecycle", ()))


def _post_step(
    problem: Problem, model: nn.Module, method: nn.Module, batch: Any, tasks: Sequence[int]
) -> None:
    """Methods whose lifecycle lists ``update`` (FAMO with ``extra_pass=True``) adapt from the
    losses recomputed on the same batch after the optimizer step: one extra forward pass."""
    if "update" in _lifecycle(method) and getattr(method, "extra_pass", False):
        with torch.no_grad():
            after = problem.scaled_losses(model(batch.inputs), batch, tasks)
        method.update(torch.stack(after))


# --------------------------------------------------------------------------- comparison
@dataclass
class CompareConfig:
    """Settings of a comparison on one problem.

    Attributes:
        epochs: epochs per run (None: the problem's default).
        seeds: the seeds; metrics are averaged over them.
        batch_size, lr: None: the problem's defaults.
        max_steps: optional cap on steps per epoch (tests).
        method_lr: see :class:`TrainConfig`.
        progress: show a tqdm progress bar (on stderr).
        timing_rounds, timing_steps: the round-robin timing of ``interleaved_step_times``
            that gives the reported ms/step (``timing_rounds=0``: report the per-run medians).
        device: see :class:`TrainConfig`.
        quick: the quick tier (``--quick``): a reduced budget whose results are indicative
            only; recorded so that the report says so.
    """

    epochs: int | None = None
    seeds: Sequence[int] = (0,)
    batch_size: int | None = None
    lr: float | None = None
    max_steps: int | None = None
    method_lr: float = Weighting.default_lr
    progress: bool = True
    timing_rounds: int = 20
    timing_steps: int = 3
    device: str = "cpu"
    quick: bool = False

    def train_config(self, problem: Problem, seed: int) -> TrainConfig:
        """The :class:`TrainConfig` of ``problem`` for ``seed``."""
        return TrainConfig(
            epochs=self.epochs if self.epochs is not None else problem.epochs,
            batch_size=self.batch_size or problem.batch_size,
            lr=self.lr or problem.lr,
            seed=seed,
            max_steps=self.max_steps,
            method_lr=self.method_lr,
            device=self.device,
        )


@dataclass
class MethodOutcome:
    """A method's results over the seeds (``error`` set when it could not run or diverged).

    ``metrics``, ``acc_mtl`` are means over the seeds; ``delta_mtl`` is the mean of the
    per-seed Δ_MTL (each against that seed's baseline), ``delta_mtl_std`` their standard
    deviation; ``rank`` the average rank over all metrics (Lee et al. 2021's protocol) among the
    methods that ran; ``ms_per_step`` the median over seeds of the median step time;
    ``win_rate`` the mean per-seed win rate against EqualWeighting (when defined);
    ``delta_note`` why Δ_MTL is NaN when it cannot be computed (a baseline metric of 0).
    """

    name: str
    runs: list[RunResult] = field(default_factory=list)
    error: str | None = None
    metrics: MetricTree | None = None
    delta_mtl: float = float("nan")
    delta_mtl_std: float = float("nan")
    acc_mtl: float = float("nan")
    rank: float = float("nan")
    ms_per_step: float = float("nan")
    win_rate: float | None = None
    #: why Δ_MTL is undefined (NaN), e.g. a baseline metric of 0
    delta_note: str | None = None

    @property
    def ok(self) -> bool:
        """True when every seed trained."""
        return self.error is None and bool(self.runs)


@dataclass
class ProblemResult:
    """Everything the report needs about one problem."""

    problem: Problem
    config: CompareConfig
    train_config: TrainConfig
    singles: list[list[RunResult]]  # [seed][single run]
    baseline: MetricTree  # mean over seeds
    methods: dict[str, MethodOutcome]
    unavailable: dict[str, str]
    history: WeightHistory
    seconds: float
    reference: ProblemResult | None = None  # scale: the unscaled digits result
    static_weights: list[float] = field(default_factory=list)

    @property
    def ran(self) -> list[MethodOutcome]:
        """The methods that trained, in order."""
        return [m for m in self.methods.values() if m.ok]


def _mean_tree(trees: Sequence[MetricTree]) -> MetricTree:
    return {
        task: {m: float(np.mean([t[task][m] for t in trees])) for m in metrics}
        for task, metrics in trees[0].items()
    }


def _flat(tree: MetricTree) -> dict[str, float]:
    return {f"{task}/{m}": v for task, ms in tree.items() for m, v in ms.items()}


def _safe_acc_mtl(tree: MetricTree, hib: Any) -> float:
    try:
        return mtl_metrics.acc_mtl(tree, hib)
    except ValueError:  # a non-positive metric (e.g. SSIM of a collapsed model)
        return float("nan")


def compare_problem(
    problem: Problem,
    methods: Sequence[str],
    config: CompareConfig,
    *,
    reference: ProblemResult | None = None,
) -> ProblemResult:
    """Train the baselines and every available method in ``methods`` on ``problem``.

    Args:
        problem: the problem.
        methods: method names (aliases accepted); unavailable ones are listed, not fatal.
        config: budget and seeds.
        reference: for ``scale``: the result of the unscaled problem, whose single-task
            baselines (and AMTL potentials) are reused so both runs are measured against the
            same baseline.
    """
    start = time.perf_counter()
    available, unavailable = registry.resolve_all(methods)
    seeds = list(config.seeds)
    tc0 = config.train_config(problem, seeds[0])
    single_sets = problem.single_runs() if reference is None else []
    n_runs = (len(single_sets) + len(available)) * len(seeds)
    bar = _progress(n_runs * tc0.epochs, f"{problem.key}", config.progress)
    history = WeightHistory(problem.task_names, chunk_size=512)
    ref_seeds = list(reference.config.seeds) if reference is not None else []
    if reference is not None and not set(seeds) <= set(ref_seeds):
        raise ValueError(
            f"reference was run with seeds {ref_seeds}, which do not include {seeds}: "
            "the comparison reuses the reference's single-task baselines of the same seeds"
        )

    singles: list[list[RunResult]] = []
    try:
        for seed in seeds:
            tc = config.train_config(problem, seed)
            if reference is not None:
                singles.append(reference.singles[ref_seeds.index(seed)])
                continue
            row = []
            for subset in single_sets:
                names = "+".join(problem.task_names[t] for t in subset)
                bar.set_postfix_str(f"single-task {names}, seed {seed}")
                row.append(
                    train_run(
                        problem,
                        subset,
                        lambda subset=subset: EqualWeighting(num_tasks=len(subset)),
                        tc,
                        label=f"single:{names}",
                        on_epoch=lambda: bar.update(1),
                    )
                )
            singles.append(row)

        outcomes: dict[str, MethodOutcome] = {}
        static_weights: list[float] = []
        T = problem.num_tasks
        for name in available:
            outcome = MethodOutcome(name)
            outcomes[name] = outcome
            for s_i, seed in enumerate(seeds):
                tc = config.train_config(problem, seed)
                ctx = _context(problem, tc, singles[s_i])
                if s_i == 0:
                    static_weights = list(ctx.static_weights or [])
                bar.set_postfix_str(f"{name}, seed {seed}")
                try:
                    run = train_run(
                        problem,
                        list(range(T)),
                        lambda ctx=ctx, name=name: registry.build_method(name, ctx),
                        tc,
                        label=name,
                        history=history if s_i == 0 else None,
                        on_epoch=lambda: bar.update(1),
                    )
                except LookupError as exc:
                    unavailable[name] = str(exc)
                    del outcomes[name]
                    bar.update(tc.epochs * (len(seeds) - s_i))
                    break
                except (ValueError, RuntimeError, FloatingPointError) as exc:
                    outcome.error = f"failed (seed {seed}): {type(exc).__name__}: {exc}"
                    bar.update(tc.epochs * (len(seeds) - s_i))
                    break
                if not _finite_tree(run.test.metrics):
                    outcome.error = f"diverged (seed {seed}): non-finite test metrics"
                    bar.update(tc.epochs * (len(seeds) - s_i - 1))
                    break
                outcome.runs.append(run)
    finally:
        bar.close()

    baselines = [problem.baseline([r.test for r in row]) for row in singles]
    baseline = _mean_tree(baselines) if baselines else {}
    _aggregate(problem, outcomes, baselines)
    ok = [o for o in outcomes.values() if o.ok]
    if ok and config.timing_rounds > 0:
        ctx0 = _context(problem, tc0, singles[0] if singles else [])
        times = interleaved_step_times(
            problem,
            {o.name: (lambda n=o.name: registry.build_method(n, ctx0)) for o in ok},
            tc0,
            rounds=config.timing_rounds,
            steps=config.timing_steps,
        )
        for o in ok:
            o.ms_per_step = times[o.name]
    return ProblemResult(
        problem=problem,
        config=config,
        train_config=tc0,
        singles=singles,
        baseline=baseline,
        methods=outcomes,
        unavailable=unavailable,
        history=history,
        seconds=time.perf_counter() - start,
        reference=reference,
        static_weights=static_weights,
    )


def _context(problem: Problem, tc: TrainConfig, singles: Sequence[RunResult]) -> Any:
    """The registry context of ``problem`` for one seed (static weights from the seeded
    initialisation, AMTL potentials from the single-task validation KPIs)."""
    T = problem.num_tasks
    with deterministic(tc.seed):
        static = problem.static_weights(problem.build_model(list(range(T))))
    return registry.MethodContext(
        num_tasks=T,
        epochs=tc.epochs,
        seed=tc.seed,
        potentials=problem.potentials([r.val for r in singles]) if len(singles) == T else None,
        static_weights=static,
        task_types=getattr(problem, "task_types", None),
    )


def interleaved_step_times(
    problem: Problem,
    factories: dict[str, Callable[[], nn.Module]],
    config: TrainConfig,
    *,
    rounds: int = 20,
    steps: int = 3,
) -> dict[str, float]:
    """Median milliseconds per training step of each method, measured round-robin.

    Every method gets a fresh model; then ``rounds`` times, each method in turn trains
    ``steps`` steps (after one warm-up step) and each step is timed. Interleaving spreads any
    change of the machine's load over all methods instead of biasing the ones that happen to
    run while it is busy (the per-run medians of :func:`train_run` are kept in the results).
    """
    data = problem.data()
    device = resolve_device(config.device)
    tasks = list(range(problem.num_tasks))
    n = len(data.train)
    bs = min(config.batch_size, n)
    states: dict[str, tuple[nn.Module, nn.Module, torch.optim.Optimizer]] = {}
    samples: dict[str, list[float]] = {name: [] for name in factories}
    with deterministic(config.seed):
        gen = torch.Generator().manual_seed(config.seed)
        batches = [
            to_device(
                problem.train_batch(data.train, torch.randperm(n, generator=gen)[:bs], gen),
                device,
            )
            for _ in range(steps)
        ]
        for name, make in factories.items():
            model = problem.build_model(tasks).to(device)
            method = make().to(device)
            params = list(model.parameters()) + list(method.parameters())
            states[name] = (model, method, torch.optim.Adam(params, lr=config.lr))

        def step(name: str, batch: Any) -> float:
            model, method, opt = states[name]
            _sync(device)
            t0 = time.perf_counter()
            losses = torch.stack(problem.scaled_losses(model(batch.inputs, method), batch, tasks))
            total = method.loss(losses)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            _post_step(problem, model, method, batch, tasks)
            _sync(device)
            return time.perf_counter() - t0

        for name in factories:
            step(name, batches[0])  # warm-up
        for _ in range(rounds):
            for name in factories:
                samples[name] += [step(name, b) for b in batches]
    return {name: 1e3 * statistics.median(v) for name, v in samples.items()}


def _finite_tree(tree: MetricTree) -> bool:
    return all(math.isfinite(v) for ms in tree.values() for v in ms.values())


def _aggregate(
    problem: Problem, outcomes: dict[str, MethodOutcome], baselines: Sequence[MetricTree]
) -> None:
    hib = problem.higher_is_better
    equal = outcomes.get("EqualWeighting")
    for out in outcomes.values():
        if not out.ok:
            continue
        trees = [r.test.metrics for r in out.runs]
        out.metrics = _mean_tree(trees)
        try:
            deltas = [problem.delta_mtl(tree, base) for tree, base in zip(trees, baselines)]
        except ValueError as exc:  # e.g. a single-task F1 of 0: the relative change is undefined
            deltas = [float("nan")]
            out.delta_note = str(exc)
        out.delta_mtl = float(np.mean(deltas))
        out.delta_mtl_std = float(np.std(deltas)) if len(deltas) > 1 else float("nan")
        out.acc_mtl = float(np.mean([_safe_acc_mtl(t, hib) for t in trees]))
        out.ms_per_step = float(np.median([r.ms_per_step for r in out.runs]))
        has_samples = out.runs[0].test.per_sample is not None
        if equal is not None and equal.ok and out is not equal and has_samples:
            metric_hib = {m: h for ms in hib.values() for m, h in ms.items()}
            rates = [
                mtl_metrics.win_rate(
                    r.test.per_sample,
                    e.test.per_sample,
                    {k: metric_hib[k] for k in r.test.per_sample},
                )
                for r, e in zip(out.runs, equal.runs)
            ]
            out.win_rate = float(np.mean(rates))
    ok = [o for o in outcomes.values() if o.ok and o.metrics is not None]
    if ok:
        flags = {f"{task}/{m}": h for task, ms in hib.items() for m, h in ms.items()}
        table = {o.name: _flat(o.metrics) for o in ok if o.metrics is not None}
        ranks = mtl_metrics.average_rank(table, flags)
        assert isinstance(ranks, dict)
        for o in ok:
            o.rank = float(ranks[o.name])


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="epoch", leave=True, dynamic_ncols=True)
