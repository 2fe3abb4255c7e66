"""Tests of the multimnist problem and of the user's own problem (examples/custom_problem.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_fast.compare.problems import get_problem
from mtl_fast.compare.problems.multimnist import overlay_pairs
from mtl_fast.compare.problems.user import load_user_problem
from mtl_fast.compare.train import CompareConfig, compare_problem

pytest.importorskip("sklearn")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "custom_problem.py"
TINY = CompareConfig(epochs=2, max_steps=2, progress=False, timing_rounds=1, timing_steps=2)


def test_overlay_places_both_digits() -> None:
    a = np.zeros((2, 64), dtype=np.float32)
    a[0, 0] = 16.0  # top-left pixel of digit 0
    a[1, 63] = 16.0  # bottom-right pixel of digit 1
    images, left, right = overlay_pairs(a, np.array([0, 1]), 50, seed=3)
    assert images.shape == (50, 12, 12) and images.max() <= 1.0
    for img, lft, rgt in zip(images, left, right):
        ones = set(zip(*np.nonzero(img)))
        # one lit pixel per digit (they may coincide); windows anchored at (1,1) and (3,3),
        # shifted by at most 1: the right digit's bottom-right pixel lands at rows/cols 9..11
        assert 1 <= len(ones) <= 2
        if rgt == 1:
            assert any(r >= 9 and c >= 9 for r, c in ones)
        if lft == 0:
            assert any(r <= 2 and c <= 2 for r, c in ones)


def test_multimnist_is_deterministic_and_trains() -> None:
    p1, p2 = get_problem("multimnist", tiny=True), get_problem("multimnist", tiny=True)
    assert torch.equal(p1.data().train.inputs, p2.data().train.inputs)
    result = compare_problem(p1, ["EqualWeighting", "IMTLG"], TINY)
    assert [o.name for o in result.ran] == ["EqualWeighting", "IMTLG"]
    assert all(0.0 <= o.metrics["left"]["acc"] <= 1.0 for o in result.ran)


def test_user_problem_runs_through_the_cli(tmp_path, capsys) -> None:
    from mtl_fast.cli import main

    spec = f"{EXAMPLE}:make_problem"
    argv = ["compare", "--problem", spec, "--methods", "equal,UW", "--epochs", "2"]
    argv += ["--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    assert "[diabetes]" in capsys.readouterr().out
    result = compare_problem(load_user_problem(spec), ["EqualWeighting"], TINY)
    assert math.isfinite(result.ran[0].delta_mtl)


def test_user_problem_errors_name_the_fix(tmp_path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from mtl_fast.compare.problems import Problem\n"
        "class P(Problem):\n    name = 'p'\n"
        "def make():\n    return P()\n"
        "def other():\n    return 3\n"
    )
    with pytest.raises(ValueError, match="missing methods"):
        load_user_problem(f"{bad}:make")
    with pytest.raises(ValueError, match="not a"):
        load_user_problem(f"{bad}:other")
    with pytest.raises(ValueError, match="no callable"):
        load_user_problem(f"{bad}:nope")
    with pytest.raises(ValueError, match="module:factory"):
        load_user_problem("nocolon:")
