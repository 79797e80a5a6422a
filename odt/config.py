"""Training configuration, validated once at the edge.

Defaults are the paper's (Appendix C, Tables C.1 and C.3; hopper-medium where a value is
per task). Bad values fail here with one line naming the field and the allowed range.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class TrainConfig(BaseModel):
    """Everything the trainer needs besides the model architecture (see ModelConfig)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: NonNegInt = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # optimisation (LAMB for theta, Adam for log lambda)
    batch_size: PosInt = 256
    learning_rate: PosFloat = 1e-4
    weight_decay: NonNegFloat = 5e-4
    warmup_steps: NonNegInt = 10_000  # linear learning-rate warmup
    grad_clip: PosFloat = 0.25  # gradient-norm clip
    init_temperature: PosFloat = 0.1  # lambda at the start
    temperature_lr: PosFloat = 1e-4
    target_entropy: float | None = None  # beta; None means -act_dim
    reward_scale: PosFloat = 0.001  # RTGs are fed to the model multiplied by this
    # offline pretraining
    pretrain_updates: NonNegInt = 5_000
    # online finetuning (Algorithm 1)
    buffer_size: PosInt = 1_000  # trajectories kept in the replay buffer
    updates_per_round: PosInt = 300  # gradient updates between two exploration rollouts
    rollouts_per_round: PosInt = 1
    online_samples: NonNegInt = 200_000  # budget of online environment steps
    g_online: float = 7200.0  # exploration RTG
    # evaluation
    g_eval: float = 3600.0
    eval_context_len: PosInt = 5
    eval_episodes: PosInt = 10
    eval_every_rounds: PosInt = 10


class ConfigError(ValueError):
    """A configuration value is out of range or unknown; its message is one line."""


def format_validation_error(err: ValidationError, where: str = "config") -> str:
    """One line per problem, joined: `<where>: <field> = <value>: <what is allowed>`."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(root)"
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            parts.append(f"unknown field '{loc}' (check the spelling)")
        elif e["type"] == "missing":
            parts.append(f"field '{loc}' is required")
        else:
            msg = e["msg"].replace("Input should be", "must be").replace("Value error, ", "")
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
