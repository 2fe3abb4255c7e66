"""Trainer integrations: the same training loop (docs/design.md) inside a framework's own loop.

* :mod:`mtl_fast.integrations.lightning` — :class:`~.lightning.MultiTaskCallback` for PyTorch
  Lightning (automatic optimization kept), ``pip install "mtl_fast[lightning]"``;
* :mod:`mtl_fast.integrations.hf` — :class:`~.hf.MultiTaskTrainer`, a
  Hugging Face ``transformers.Trainer`` for models that return one loss per task,
  ``pip install "mtl_fast[hf]"``.

Both do the calls a training loop owes a method besides ``split`` and ``loss``: the lifecycle
hooks the method's class lists (``end_epoch()`` once per training epoch, ``observe(metrics)``
after each evaluation), one optimizer parameter group for the method's learnable parameters,
the weights logged per task name, and the method's state in the framework's checkpoints, so a
resumed run gives the weights of an unbroken one. Importing this package imports neither
framework; each submodule imports its own.
"""
