"""The ``scale`` problem: ``digits`` with one loss multiplied by 10 (scale invariance)."""

from __future__ import annotations

from typing import Any

from mtl_fast.compare.problems.digits import DigitsProblem

__all__ = ["ScaleProblem"]


class ScaleProblem(DigitsProblem):
    """Liu et al. 2021's scale-invariance test (Table 1): :class:`DigitsProblem` with the
    classification loss multiplied by ``factor`` (10) before the weighting method sees it.

    The report compares every metric with the unscaled ``digits`` run of the same method: a
    scale-invariant method gives the same numbers.
    """

    name = "scale"
    title = "Scale invariance: digits with the class loss ×10"
    reference_problem = "digits"

    def __init__(self, *, tiny: bool = False, factor: float = 10.0, task: int = 0) -> None:
        multipliers = [1.0] * len(DigitsProblem.task_names)
        multipliers[task] = float(factor)
        super().__init__(tiny=tiny, loss_multipliers=multipliers)
        self.factor = float(factor)
        self.scaled_task = task

    def description(self) -> str:
        return (
            f"the `digits` problem with the **{self.task_names[self.scaled_task]}** loss "
            f"multiplied by {self.factor:g} before the weighting method sees it (Liu et al. 2021, "
            "Table 1, multiplies the semantic-segmentation loss by 10). Same data, seeds, "
            "initialisation and budget as `digits`; the table gives each metric and its change "
            "from the unscaled run (a scale-invariant method shows no change). "
            "`StaticWeighting` recomputes its 1/L_t(0) weights on the scaled losses, so it is "
            "invariant by construction."
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "factor": self.factor, "scaled_task": self.scaled_task}
