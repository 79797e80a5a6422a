"""odt: the Online Decision Transformer (Zheng, Zhang, Grover, ICML 2022) on gymnasium + MuJoCo.

The library: model, losses, replay buffer, trainer, and the paper's two loops
(`pretrain`, Algorithm 2; `finetune`, Algorithm 1) with evaluation, logging,
checkpointing and resume inline. It never imports the pipeline's tools (MLflow, DVC,
Optuna, joblib), so a notebook gets everything the pipeline gets.
"""
from odt.config import ConfigError, EvalConfig, FinetuneConfig, OptimConfig, PretrainConfig
from odt.data import Trajectory, returns_to_go
from odt.evaluation import RolloutResult, evaluate, rollout, score
from odt.logger import Logger, MemoryLogger, NullLogger
from odt.loops import Run, finetune, pretrain
from odt.model import DecisionTransformer, ModelConfig
from odt.replay import Batch, TrajectoryReplayBuffer
from odt.trainer import ODTTrainer, load_policy

__all__ = [
    "Batch",
    "ConfigError",
    "DecisionTransformer",
    "EvalConfig",
    "FinetuneConfig",
    "Logger",
    "MemoryLogger",
    "ModelConfig",
    "NullLogger",
    "ODTTrainer",
    "OptimConfig",
    "PretrainConfig",
    "RolloutResult",
    "Run",
    "Trajectory",
    "TrajectoryReplayBuffer",
    "evaluate",
    "finetune",
    "load_policy",
    "pretrain",
    "returns_to_go",
    "rollout",
    "score",
]
