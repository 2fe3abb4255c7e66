"""The integration examples in examples/ run end to end at tiny sizes (imported and called, in
this process). The Lightning and HF ones skip only when their package is absent."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

INSTALL = "pip install 'mtl_fast"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite(values: dict[str, float]) -> bool:
    return bool(values) and all(math.isfinite(v) for v in values.values())


@pytest.mark.parametrize("method", ["IMTL", "CVWeighting"])
def test_amp_bf16(method: str) -> None:
    losses = load("amp_bf16").main(["--method", method, "--epochs", "2", "--samples", "128"])
    assert finite(losses) and set(losses) == {"depth", "normals", "edges"}


def test_lightning(tmp_path: Any) -> None:
    pytest.importorskip(
        "lightning", reason="lightning is not installed: pip install 'mtl_fast[lightning]'"
    )
    logged = load("lightning_train").main(
        ["--epochs", "1", "--samples", "256", "--root", str(tmp_path)]
    )
    assert finite(logged)
    assert {f"mtl_weight/{n}" for n in ("depth", "normals", "edges")} <= set(logged)


def test_hf() -> None:
    pytest.importorskip(
        "transformers", reason="transformers is not installed: pip install 'mtl_fast[hf]'"
    )
    pytest.importorskip(
        "accelerate", reason="accelerate is not installed: pip install 'mtl_fast[hf]'"
    )
    weights = load("hf_train").main(["--epochs", "1", "--samples", "128"])
    assert finite(weights)


def test_compile_train() -> None:
    """torch.compile of the model with split (aot_eager here: no C++ build in the test)."""
    result = load("compile_train").main(
        ["--epochs", "1", "--samples", "128", "--backend", "aot_eager"]
    )
    assert result["graph_breaks"] == 0 and finite(result["losses"])


def test_amp_fp16_scaler() -> None:
    """fp16 autocast with a GradScaler, overflows forced: skipped steps, finite weights."""
    result = load("amp_fp16_scaler").main(
        ["--epochs", "1", "--samples", "256", "--overflow-every", "3"]
    )
    assert result["skipped_steps"] >= 1
    assert finite(result["losses"]) and finite(result["weights"])


@pytest.mark.parametrize("method", ["IMTL", "CVWeighting"])
def test_ddp_train(method: str, tmp_path: Any) -> None:
    """examples/ddp_train.py under torchrun, two gloo processes: the weights agree everywhere."""
    import os
    import sys

    from tests._isolated import run_isolated

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-X", "faulthandler", "-m", "torch.distributed.run"]
    script = [str(EXAMPLES / "ddp_train.py"), "--method", method, "--steps", "3"]
    code, out, err = run_isolated(
        [*launcher, "--standalone", "--nproc_per_node=2", *script],
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert code is not None, f"ddp_train.py did not finish in 180 s:\n{out}\n{err}"
    assert code == 0, out + err
    assert f"{method}: weights agree on all 2 processes" in out
