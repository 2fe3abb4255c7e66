"""The Hugging Face Trainer on a multi-task model: ``MultiTaskTrainer`` takes the model's task
losses (``"task_losses"`` in its output), hands it the method as ``mtl_method`` for ``split``,
and keeps the method's state in every checkpoint. The model is randomly initialised from a
config built in code (nothing is downloaded). Needs ``pip install "mtl_fast[hf]"``.

    python examples/hf_train.py                          # IMTL, 3 epochs, then resumes to 4
    python examples/hf_train.py --method CVWeighting
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import PretrainedConfig, PreTrainedModel, TrainingArguments

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _toy_data import TASKS, SharedEncoderModel, make_data

from mtl_fast.integrations.hf import MultiTaskTrainer
from mtl_fast.methods import registry


class MultiTaskConfig(PretrainedConfig):
    model_type = "mtl_fast_example"

    def __init__(self, hidden: int = 32, **kwargs: Any) -> None:
        self.hidden = hidden
        super().__init__(**kwargs)


class MultiTaskModel(PreTrainedModel):
    config_class = MultiTaskConfig

    def __init__(self, config: MultiTaskConfig) -> None:
        super().__init__(config)
        self.body = SharedEncoderModel(config.hidden)
        self.post_init()

    def forward(self, x: torch.Tensor, y: torch.Tensor, mtl_method: Any = None) -> dict:
        if mtl_method is None:  # inference: no balancing needed
            from mtl_fast import EqualWeighting

            mtl_method = EqualWeighting().eval()
        losses = self.body.task_losses(x, y, mtl_method)
        return {"task_losses": dict(zip(TASKS, losses))}


class Rows(Dataset):
    def __init__(self, n: int) -> None:
        self.x, self.y = make_data(n)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def train(args: argparse.Namespace, out: str, epochs: int, resume: bool) -> MultiTaskTrainer:
    torch.manual_seed(0)
    options = {"extra_pass": False} if "update" in registry.get(args.method).lifecycle else {}
    trainer = MultiTaskTrainer(
        model=MultiTaskModel(MultiTaskConfig()),
        args=TrainingArguments(
            output_dir=out,
            num_train_epochs=epochs,
            per_device_train_batch_size=64,
            learning_rate=1e-3,
            save_strategy="epoch",
            logging_steps=10,
            report_to="none",
            remove_unused_columns=False,
            disable_tqdm=True,
        ),
        train_dataset=Rows(args.samples),
        method=registry.get(args.method).build(len(TASKS), **options),
        task_names=TASKS,
        method_lr=1e-2,
    )
    trainer.train(resume_from_checkpoint=resume or None)
    return trainer


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="IMTL", choices=registry.names())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=2048)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as out:
        train(args, out, args.epochs, resume=False)
        trainer = train(args, out, args.epochs + 1, resume=True)  # continues from the checkpoint
    weights = {n: float(w) for n, w in zip(TASKS, trainer.method.weights)}
    print(f"after {trainer.state.global_step} steps, weights:", weights)
    return weights


if __name__ == "__main__":
    main()
