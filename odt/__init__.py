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
    "odt.checkpoint": ("load_policy", "save_policy"),
    "odt.config": ("ConfigError", "EvalConfig", "FinetuneConfig", "ModelConfig", "OptimConfig", "PretrainConfig"),
    "odt.data": ("Trajectory", "returns_to_go"),
    "odt.evaluation": ("RolloutResult", "evaluate", "rollout", "score"),
    "odt.logger": ("Logger", "MemoryLogger", "NullLogger"),
    "odt.loops": ("finetune", "pretrain"),
    "odt.model": ("DecisionTransformer",),
    "odt.replay": ("Batch", "TrajectoryReplayBuffer"),
    "odt.runs": ("Run",),
    "odt.trainer": ("ODTTrainer",),
}


def lazy_exports(where: dict[str, tuple[str, ...]], package: str):
    """`__all__`, `__getattr__` and `__dir__` for a package whose names (module: names) are imported on first use."""
    module_of = {name: module for module, names in where.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def getattr_(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(module_of[name]), name)  # once: then found directly
        return value

    return sorted(module_of), getattr_, lambda: sorted(set(namespace) | set(module_of))


__all__, __getattr__, __dir__ = lazy_exports(_WHERE, __name__)
