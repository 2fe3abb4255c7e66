"""mtl_fast.integrations.hf with the real transformers package, on a tiny randomly initialised
model built from a config in code (no download): training, the method's optimizer group, the
logged weights, lifecycle calls and checkpoint resume equal to an unbroken run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import Dataset

import mtl_fast as mf
from mtl_fast.methods import registry

transformers = pytest.importorskip(
    "transformers",
    reason="transformers is not installed: pip install 'mtl_fast[hf]' (make test installs it)",
)
pytest.importorskip(
    "accelerate",
    reason="accelerate (the Trainer needs it) is not installed: pip install 'mtl_fast[hf]'",
)
from _integration_toy import TASKS, Net, assert_same_run, data  # noqa: E402

from mtl_fast.integrations.hf import METHOD_STATE_FILE, MultiTaskTrainer  # noqa: E402

BATCHES = 4  # per epoch


class ToyConfig(transformers.PretrainedConfig):
    model_type = "mtl_fast_toy"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.keys_to_ignore_at_inference = ["task_losses"]


class ToyModel(transformers.PreTrainedModel):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.net = Net()

    def _init_weights(self, module: Any) -> None:
        """Keep Net's seeded initialisation."""

    def forward(self, x: torch.Tensor, y: torch.Tensor, mtl_method: Any = None) -> dict:
        method = mtl_method if mtl_method is not None else mf.EqualWeighting().eval()
        losses = self.net.losses(x, y, method)
        acc = torch.exp(-torch.stack(losses).detach()).reshape(1, -1)
        return {"task_losses": dict(zip(TASKS, losses)), "acc": acc}


class Rows(Dataset):
    def __init__(self) -> None:
        self.x, self.y = data()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def accuracy_metrics(pred: Any) -> dict:
    acc = torch.as_tensor(pred.predictions).reshape(-1, len(TASKS)).mean(0)
    return {f"acc_{n}": float(a) for n, a in zip(TASKS, acc)}


def make(tmp_path: Any, method: mf.Weighting, epochs: int, **kwargs: Any) -> MultiTaskTrainer:
    val = kwargs.pop("val", False)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        num_train_epochs=epochs,
        learning_rate=0.01,
        lr_scheduler_type="constant",
        save_strategy="epoch",
        eval_strategy="epoch" if val else "no",
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        seed=0,
        remove_unused_columns=False,
        label_names=["y"],
        disable_tqdm=True,
    )
    return MultiTaskTrainer(
        model=ToyModel(ToyConfig()),
        args=args,
        train_dataset=Rows(),
        eval_dataset=Rows() if val else None,
        compute_metrics=accuracy_metrics if val else None,
        method=method,
        task_names=TASKS,
        **kwargs,
    )


def test_training_logs_weights_and_groups_the_method(tmp_path: Any) -> None:
    method = mf.IMTL(3)
    trainer = make(tmp_path, method, 1, method_lr=0.02)
    start = [p.detach().clone() for p in method.parameters()]
    trainer.train()
    assert method.step == BATCHES
    assert not all(torch.equal(a, b) for a, b in zip(start, method.parameters()))
    assert all(p.grad is None for p in method.parameters())  # cleared after every step
    group = trainer.optimizer.param_groups[-1]
    assert {id(p) for p in group["params"]} == {id(p) for p in method.parameters()}
    assert group["lr"] == 0.02 and group["weight_decay"] == 0.0
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == BATCHES
    assert [logged[-1][f"mtl_weight/{n}"] for n in TASKS] == method.weights.tolist()
    assert (tmp_path / f"checkpoint-{BATCHES}" / METHOD_STATE_FILE).is_file()


def test_observe_and_end_epoch(tmp_path: Any) -> None:
    """AMTL gets the evaluation's per-task metrics once per evaluation; DTP too (observe) and
    DWA one ``end_epoch()`` per epoch."""
    amtl = mf.AMTL([0.9] * 3)
    seen: list[list[float]] = []
    original = amtl.observe
    amtl.observe = lambda m, **kw: seen.append(list(m)) or original(m, **kw)  # type: ignore[method-assign]
    trainer = make(tmp_path, amtl, 2, val=True, observe=[f"eval_acc_{n}" for n in TASKS])
    trainer.train()
    evals = [h for h in trainer.state.log_history if "eval_acc_a" in h]
    assert seen == [[h[f"eval_acc_{n}"] for n in TASKS] for h in evals] and len(seen) == 2
    with pytest.raises(ValueError, match="observe="):
        make(tmp_path, mf.AMTL([0.9] * 3), 1)

    dwa = mf.DWA(3)
    calls: list[int] = []
    original_end = dwa.end_epoch
    dwa.end_epoch = lambda: calls.append(dwa.step) or original_end()  # type: ignore[method-assign]
    make(tmp_path / "dwa", dwa, 3).train()
    assert calls == [BATCHES, 2 * BATCHES, 3 * BATCHES]


def test_refuses_models_it_cannot_serve(tmp_path: Any) -> None:
    class NoKeyword(ToyModel):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict:  # type: ignore[override]
            return super().forward(x, y)

    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="mtl_method=None"):
        MultiTaskTrainer(
            model=NoKeyword(ToyConfig()), args=args, method=mf.IMTLG(), task_names=TASKS
        )
    model = ToyModel(ToyConfig())
    model.method = mf.IMTL(3)
    with pytest.raises(ValueError, match="submodule"):
        MultiTaskTrainer(model=model, args=args, method=model.method, task_names=TASKS)


@pytest.mark.parametrize(("name", "val"), [("IMTL", False), ("DWA", False), ("AMTL", True)])
def test_resume_gives_the_unbroken_run(tmp_path: Any, name: str, val: bool) -> None:
    """Train 2 epochs, resume from the last checkpoint to 4 with a fresh trainer, model and
    method: the model, the method's state and weights equal an unbroken 4-epoch run exactly."""
    spec = registry.get(name)
    observe = [f"eval_acc_{n}" for n in TASKS] if val else None

    def run(root: Any, epochs: int, resume: Any = None) -> MultiTaskTrainer:
        t = make(root, spec.build(3), epochs, val=val, observe=observe, method_lr=0.02)
        t.train(resume_from_checkpoint=resume)
        return t

    unbroken = run(tmp_path / "unbroken", 4)
    run(tmp_path / "broken", 2)
    resumed = run(tmp_path / "broken", 4, resume=True)
    assert resumed.method.step == unbroken.method.step == 4 * BATCHES
    assert_same_run(
        (resumed.model.net, resumed.method), (unbroken.model.net, unbroken.method), exact=True
    )


def test_trainer_imports_from_the_repository_root() -> None:
    """``python -c "from transformers import Trainer"`` run from the repository root (where the
    repository's ``kernels/`` folder is on sys.path) imports the real ``kernels`` package that
    transformers needs."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", "from transformers import Trainer; print(Trainer.__name__)"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Trainer"
