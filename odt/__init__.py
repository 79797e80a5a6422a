"""odt: the Online Decision Transformer (Zheng, Zhang, Grover, ICML 2022) on gymnasium + MuJoCo.

The library: model, losses, replay buffer, trainer, and the paper's two loops
(`pretrain`, Algorithm 2; `finetune`, Algorithm 1) with evaluation, logging,
checkpointing and resume inline. It never imports the pipeline's tools (MLflow, DVC,
Optuna, joblib), so a notebook gets everything the pipeline gets.

The names below are imported on first use (`odt.finetune` loads torch then), so that
`import odt.config` or a command line that only parses its arguments stays fast.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "odt.config": ("ConfigError", "EvalConfig", "FinetuneConfig", "ModelConfig", "OptimConfig", "PretrainConfig"),
    "odt.data": ("Trajectory", "returns_to_go"),
    "odt.evaluation": ("RolloutResult", "evaluate", "rollout", "score"),
    "odt.logger": ("Logger", "MemoryLogger", "NullLogger"),
    "odt.loops": ("Run", "finetune", "pretrain"),
    "odt.model": ("DecisionTransformer",),
    "odt.replay": ("Batch", "TrajectoryReplayBuffer"),
    "odt.trainer": ("ODTTrainer", "load_policy"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE)


def __getattr__(name: str) -> Any:
    if name not in _MODULE:
        raise AttributeError(f"module 'odt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE[name]), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
