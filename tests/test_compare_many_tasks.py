"""examples/many_tasks.py (the large-T showcase through mf.MultiTaskLinear) runs end to end on
its quick tier and reports what it claims: per method the mean and worst normalised error, the
step time, and the best loss-based method chosen on validation."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "many_tasks.py"

pytest.importorskip("sklearn")


def _load():
    spec = importlib.util.spec_from_file_location("_many_tasks_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_quick_showcase(tmp_path, capsys) -> None:
    mod = _load()
    out = tmp_path / "r.json"
    argv = ["--quick", "--steps", "3", "--methods", "GLS,SI,IMTLG", "--json", str(out)]
    results = mod.main(argv)
    printed = capsys.readouterr().out
    assert "gradnorm" in printed and "digits" in printed and "balancing" in printed
    data = json.loads(out.read_text())
    assert [p["problem"] for p in data["problems"]] == ["gradnorm", "digits"]
    for prob in results["problems"]:
        rows = prob["methods"]
        assert list(rows) == ["EqualWeighting", "GLS", "SI", "IMTLG"]
        assert prob["best_loss_based"] in ("GLS", "SI")
        for r in rows.values():
            assert r["ms_per_step"] > 0 and 0.0 <= r["test_mean"] <= r["test_worst"]
    assert results["problems"][0]["num_tasks"] == 40


def test_gradnorm_tasks_differ_in_scale() -> None:
    import torch

    mod = _load()
    data = mod.gradnorm_problem(30, 2, torch.Generator().manual_seed(0))
    spread = data.y["train"].std(dim=(0, 2))
    assert data.num_tasks == 30 and float(spread.max() / spread.min()) > 30
