"""Bad numbers never become results: `Diverged`, raised where a loss, gradient norm or score is not finite.

The learners check (odt/trainer.py, odt/baselines/); the loops and the pipeline name who
diverged and the setting to lower, so the error reads as one line:
`pretrain hopper-medium-v2 seed 3 diverged at update 10: the gradient norm is inf (loss 5e+15); lower ...`.
"""
from __future__ import annotations

import functools
import math
from typing import Any


class Diverged(RuntimeError):
    """Training produced a non-finite number: `quantity` (in words: "loss", "gradient norm", "evaluation's
    eval_return") is `value` at update `step` (1-based). The message is one line; `named` adds who diverged
    and which setting to lower.

    On the CPU an update checks its loss and gradient norm before the optimiser step, so a
    non-finite gradient never reaches the weights and the trainer stays as after update
    `step - 1`. On CUDA, and with `cuda_graph` (no host sync per update), a block of updates is
    checked once at its end: the weights in memory may be non-finite then, so nothing may be
    saved after this error.
    """

    def __init__(self, step: int, quantity: str, value: float, *, detail: str = "", learning_rate: float | None = None,
                 where: str | None = None, setting: str = "the learning rate"):
        self.step, self.quantity, self.value, self.detail = int(step), quantity, float(value), detail
        self.learning_rate, self.where, self.setting = learning_rate, where, setting
        super().__init__(self.message())

    def message(self) -> str:
        who = f"{self.where} diverged" if self.where else "diverged"
        detail = f" ({self.detail})" if self.detail else ""
        advice = "" if self.learning_rate is None else f"; lower {self.setting} ({self.learning_rate})"
        return f"{who} at update {self.step}: the {self.quantity} is {self.value}{detail}{advice}"

    def _fields(self) -> dict[str, Any]:
        return {"step": self.step, "quantity": self.quantity, "value": self.value, "detail": self.detail,
                "learning_rate": self.learning_rate, "where": self.where, "setting": self.setting}

    def named(self, where: str, setting: str | None = None) -> Diverged:
        """The same divergence, naming who (e.g. "pretrain hopper-medium-v2 seed 3") and the setting to lower."""
        return Diverged(**{**self._fields(), "where": where, "setting": setting or self.setting})

    def __reduce__(self):  # picklable across processes, whatever the constructor's keywords
        return functools.partial(Diverged, **self._fields()), ()


def training_diverged(step: int, loss: float, grad_norm: float, learning_rate: float | None) -> Diverged | None:
    """The error for an update whose loss or gradient norm is not finite, else None."""
    if not math.isfinite(loss):
        return Diverged(step, "loss", loss, detail=f"grad norm {grad_norm:.4g}", learning_rate=learning_rate)
    if not math.isfinite(grad_norm):
        return Diverged(step, "gradient norm", grad_norm, detail=f"loss {loss:.4g}", learning_rate=learning_rate)
    return None


def check_scores(scores: dict[str, float], step: int, learning_rate: float | None = None, *,
                 where: str | None = None) -> dict[str, float]:
    """`scores` (an evaluation's eval_* numbers) if all are finite, else `Diverged`: a NaN score is never a result."""
    for key, value in scores.items():
        if not math.isfinite(value):
            raise Diverged(step, f"evaluation's {key}", value, learning_rate=learning_rate, where=where)
    return scores
