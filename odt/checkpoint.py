"""One-file checkpoints, written atomically and read back without unpickling code; the policy file.

A loop's checkpoint is a dict of tensors, numbers and strings (the learner's `state_dict()`
and the loop's own progress), so that it loads with `weights_only=True`: `tensors` turns a
state's numpy arrays into tensors for it. A policy file (`save_policy`, `load_policy`) holds
what inference needs and nothing of training.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from odt.atomic import atomic_path, exception_chain, writer_error
from odt.config import EvalConfig, ModelConfig
from odt.model import DecisionTransformer


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (truncated, foreign, or missing what it should hold); one line naming it."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (odt.atomic): a reader, or a process killed mid-write, sees the old file or the new one.

    A full disk or a file-size limit is a WriteError (`cannot write PATH: CAUSE`), the old file left as it was,
    also where torch's writer reports it as its own RuntimeError.
    """
    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(state, f)
        except RuntimeError as err:
            if not _writer_failed(err):
                raise
            raise writer_error(err, path, tmp) from None
    return Path(path)


def _writer_failed(err: RuntimeError) -> bool:
    """Whether torch's zip writer failed on a write the OS refused (its message, or the OSError it was handling)."""
    return any(isinstance(e, OSError) or "inline_container" in str(e) or "PytorchStreamWriter" in str(e)
               for e in exception_chain(err))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    how: str = "delete it and rerun") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors, numbers, strings and containers only. `how`: the way out, for the
    message."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run the stage that writes it first)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}); {how}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint; {how}")
    return state


def check_checkpoint(path: str | os.PathLike, keys: Sequence[str] = ("trainer",), *,
                     how: str = "delete it and rerun") -> None:
    """Raise CheckpointError unless `path` loads and holds `keys`: an input checked once, before work starts on it."""
    state = load_checkpoint(path, how=how)
    missing = [k for k in keys if k not in state]
    if missing:
        holds = ", ".join(map(str, state)) or "nothing"
        raise CheckpointError(f"checkpoint {path} has no '{missing[0]}' (it holds {holds}); {how}")


def tensors(state: dict[str, Any]) -> dict[str, Any]:
    """`state` with its numpy arrays as tensors sharing their memory (a checkpoint holds no arrays);
    `np.asarray` turns them back, again without a copy."""
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def save_policy(path: str | os.PathLike, trainer: Any, cfg: EvalConfig | None = None) -> Path:
    """An ODTTrainer's weights and what inference needs (and how to score it, given `cfg`), without optimiser
    or buffer."""
    return save_checkpoint(path, {
        "task": trainer.task,
        "model_config": dataclasses.asdict(trainer.model_cfg),
        "model": trainer.model.state_dict(),
        "state_mean": torch.from_numpy(trainer.state_mean),
        "state_std": torch.from_numpy(trainer.state_std),
        "evaluation": None if cfg is None else cfg.evaluation.model_dump(),
    })


def load_policy(path: str | os.PathLike) -> tuple[DecisionTransformer, dict[str, Any]]:
    """(model in eval mode, the rest of a `save_policy` file) for odt.evaluation.evaluate; from a loop's checkpoint,
    its trainer's model and state normaliser (and task)."""
    state = load_checkpoint(path)
    if "trainer" in state:
        state = {k: v for k, v in state["trainer"].items() if k in ("task", "model_config", "model", "state_mean",
                                                                     "state_std")}
    model = DecisionTransformer(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    info = {k: v for k, v in state.items() if k not in ("model", "model_config")}
    info["state_mean"], info["state_std"] = info["state_mean"].numpy(), info["state_std"].numpy()
    return model.eval(), info
