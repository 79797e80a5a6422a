"""One config per phase, validated once at the edge.

Defaults are the paper's (Appendix C, Tables C.1 and C.3; hopper-medium where a value is
per task). Each phase config holds its optimiser values, its cadence beside the budget it
paces, and how its policy is scored. Bad values fail here with one line naming the field.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.dataclasses import dataclass

from odt.tasks import get_task

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EvalConfig(_Config):
    """How a policy is scored: mean actions, target return g_eval, the evaluation context length."""

    g_eval: float = 3600.0
    eval_context_len: PosInt = 5
    eval_episodes: PosInt = 10

    @property
    def evaluation(self) -> EvalConfig:
        """Just the evaluation settings of a phase config."""
        return EvalConfig(**{k: getattr(self, k) for k in EvalConfig.model_fields})


class OptimConfig(_Config):
    """LAMB on theta (linear warmup, gradient clipping); Adam on log lambda, the temperature."""

    optimizer: Literal["lamb", "adamw"] = "lamb"  # adamw: the original Decision Transformer's
    batch_size: PosInt = 256
    learning_rate: PosFloat = 1e-4
    weight_decay: NonNegFloat = 5e-4
    decoupled_weight_decay: bool = True  # LAMB: decay the weights apart from the update (pytorch-optimizer's default),
    # or add it to the update before the trust ratio, as the LAMB paper (You et al. 2020) does
    warmup_steps: NonNegInt = 10_000  # linear learning-rate warmup, counted from the first update ever
    grad_clip: PosFloat = 0.25  # gradient-norm clip
    init_temperature: PosFloat = 0.1  # lambda at the start
    temperature_lr: PosFloat = 1e-4
    target_entropy: float | None = None  # beta; None means -act_dim


class PretrainConfig(OptimConfig, EvalConfig):
    """Algorithm 2: `pretrain_updates` updates on the offline data; cadence in updates."""

    pretrain_updates: NonNegInt = 5_000
    log_every: PosInt = 100  # updates between two logged metric rows
    checkpoint_every: PosInt = 1000  # updates between two resumable checkpoints (a multiple of log_every)
    eval_every: NonNegInt = 0  # updates between two evaluations; 0: only at the end

    @model_validator(mode="after")
    def _check(self) -> PretrainConfig:
        for name in ("checkpoint_every", "eval_every"):
            if getattr(self, name) % self.log_every:
                raise ValueError(f"{name} ({getattr(self, name)}) must be a multiple of log_every ({self.log_every})")
        return self


class FinetuneConfig(OptimConfig, EvalConfig):
    """Algorithm 1: rounds of (explore, add to the buffer, update) until the online budget; cadence in rounds."""

    buffer_size: PosInt = 1_000  # trajectories kept in the replay buffer
    buffer_init: Literal["top", "random"] = "top"  # the buffer starts with the top-N offline trajectories by
    # return (Algorithm 1, line 2), or N drawn at random without replacement (Appendix A's alternative)
    updates_per_round: PosInt = 300  # gradient updates between two exploration rollouts
    rollouts_per_round: PosInt = 1
    online_samples: NonNegInt = 200_000  # budget of online environment steps
    g_online: float = 7200.0  # exploration RTG
    # the curriculum of Sec. 5.2 (Fig. 5.3): explore with the q-th percentile (0-100) of the returns in the
    # buffer, recomputed each round, instead of the fixed g_online
    curriculum_percentile: Annotated[float, Field(ge=0, le=100)] | None = None
    hindsight_relabel: bool = True  # False: online trajectories keep the RTGs they were conditioned on (Fig. 5.4)
    # lambda when finetuning starts; None: it continues from the pretrained trainer, as in the authors' code
    # and Fig. G.1 (one lambda through both phases)
    init_temperature: PosFloat | None = None
    # restart the linear warmup when finetuning starts; False: its position continues from pretraining (the
    # authors' code: one scheduler through both phases), so a short pretraining finetunes at part of the rate
    restart_warmup: bool = False
    eval_every_rounds: PosInt = 10
    checkpoint_every_rounds: PosInt = 10


# The model's and the baselines' configs live here, not beside their torch code, so that
# params.yaml is validated without importing torch (a bad flag or key reports at once).
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class ModelConfig:
    state_dim: PosInt
    act_dim: PosInt
    context_len: PosInt = 20  # K, timesteps per training segment
    embed_dim: PosInt = 512
    n_layer: PosInt = 4
    n_head: PosInt = 4
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    max_ep_len: PosInt = 1000  # size of the timestep embedding table
    use_positional_embedding: bool = True  # False: the paper's no-positional-embedding ablation
    stochastic: bool = True  # False: deterministic DT head trained with MSE
    activation: Literal["relu", "gelu"] = "relu"  # the paper uses ReLU
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    # RTGs are fed to the model multiplied by this: part of what the policy's inputs mean,
    # like the state normaliser, so it travels with the model (D4RL locomotion 1e-3, AntMaze 1)
    reward_scale: Annotated[float, Field(gt=0)] = 0.001

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.embed_dim % self.n_head:
            raise ValueError(f"embed_dim ({self.embed_dim}) must be divisible by n_head ({self.n_head})")
        if self.log_std_min >= self.log_std_max:
            raise ValueError("log_std_min must be below log_std_max")
        return self


class IQLConfig(_Config):
    """IQL's published settings for locomotion (AntMaze: expectile 0.9, temperature 10)."""

    hidden_dim: PosInt = 256
    n_hidden: PosInt = 2
    learning_rate: PosFloat = 3e-4  # Adam, all three networks; the actor's decays to 0 on a cosine
    batch_size: PosInt = 256
    discount: Annotated[float, Field(gt=0, le=1)] = 0.99
    tau: Annotated[float, Field(gt=0, le=1)] = 0.005  # target-network update
    expectile: Annotated[float, Field(gt=0, lt=1)] = 0.7
    temperature: PosFloat = 3.0  # beta, the inverse temperature of the advantage weights
    max_weight: PosFloat = 100.0  # advantage weights are clipped here
    offline_updates: NonNegInt = 1_000_000
    online_samples: NonNegInt = 200_000  # environment steps online, one update each
    buffer_size: PosInt = 2_000_000  # transitions: the offline data, then FIFO
    log_every: PosInt = 1000  # updates between two logged rows
    checkpoint_every: PosInt = 10_000  # updates between two checkpoints (online: at the next episode's end)
    eval_every: PosInt = 10_000  # online environment steps between two evaluations
    eval_episodes: PosInt = 10


class SACConfig(_Config):
    hidden_dim: PosInt = 256
    n_hidden: PosInt = 2
    learning_rate: PosFloat = 3e-4
    batch_size: PosInt = 256
    discount: PosFloat = 0.99
    tau: PosFloat = 0.005
    buffer_size: PosInt = 1_000_000
    random_steps: NonNegInt = 10_000  # uniformly random actions first; at most a tenth of the budget
    online_samples: NonNegInt = 200_000
    log_every: PosInt = 1000  # environment steps between two rows (at the next episode's end)
    checkpoint_every: PosInt = 10_000  # environment steps between two checkpoints (at the next episode's end)
    eval_every: PosInt = 10_000
    eval_episodes: PosInt = 10


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; its message is one line."""


def format_validation_error(err: ValidationError, where: str = "config") -> str:
    """One line per problem, joined: `<where>: <field> = <value>: <what is allowed>`."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"].replace("Input should be", "must be").replace("Value error, ", "")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            parts.append(f"unknown field '{loc}' (check the spelling)")
        elif e["type"] == "missing":
            parts.append(f"field '{loc}' is required")
        elif not loc:  # a check across fields: its message names them
            parts.append(msg)
        else:
            parts.append(f"{loc} = {e.get('input')!r}: {msg}")
    return f"invalid {where}: " + "; ".join(parts)


def validate(cls: type, values: dict[str, Any], where: str = "config") -> Any:
    """Build `cls(**values)`, turning a pydantic error into a one-line ConfigError."""
    try:
        return cls(**values)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, where)) from None
    except TypeError as err:  # a plain dataclass rejecting an argument
        raise ConfigError(f"invalid {where}: {err}") from None


def task_model(task: str, values: dict[str, Any], where: str = "model config") -> ModelConfig:
    """The task's ModelConfig: dims and reward scale from odt.tasks, the rest from `values` (which leave the dims to
    the task), validated to one line."""
    for key in ("state_dim", "act_dim"):
        if key in values:
            raise ConfigError(f"{where}: '{key}' comes from the task, remove it")
    spec = get_task(task)
    return validate(ModelConfig, {"state_dim": spec.obs_dim, "act_dim": spec.act_dim, "reward_scale": spec.reward_scale,
                                  **values}, where)
