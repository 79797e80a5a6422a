"""odt: the Online Decision Transformer (Zheng, Zhang, Grover, ICML 2022) on gymnasium + MuJoCo.

The core library: model, losses, replay buffer, trainer, evaluation. It never imports
the pipeline's tools (MLflow, DVC, Optuna, joblib), so it works as well from a notebook.
"""
from odt.config import ConfigError, TrainConfig
from odt.data import Trajectory, returns_to_go
from odt.evaluation import RolloutResult, evaluate, rollout
from odt.model import DecisionTransformer, ModelConfig
from odt.replay import Batch, TrajectoryReplayBuffer
from odt.trainer import ODTTrainer

__all__ = [
    "Batch",
    "ConfigError",
    "DecisionTransformer",
    "ModelConfig",
    "ODTTrainer",
    "RolloutResult",
    "TrainConfig",
    "Trajectory",
    "TrajectoryReplayBuffer",
    "evaluate",
    "returns_to_go",
    "rollout",
]
