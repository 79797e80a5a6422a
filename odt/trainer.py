"""The learner of both phases: model, LAMB and its schedule, the temperature, the replay buffer, RNGs.

Read `update` top to bottom for one gradient step: sample segments, NLL minus
lambda * entropy for the policy (LAMB, warmup, gradient clipping), then the dual step on
log lambda (Adam). When to update, explore, evaluate and checkpoint is the loops' business
(odt/loops.py).
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
import torch
from pytorch_optimizer import Lamb
from tqdm.auto import tqdm

from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.data import Trajectory
from odt.config import EvalConfig, FinetuneConfig, OptimConfig
from odt.evaluation import RolloutResult, eval_seeds, evaluate, rollout, score
from odt.losses import TanhNormal, deterministic_loss, policy_loss, temperature_loss
from odt.model import DecisionTransformer, ModelConfig
from odt.replay import Batch, TrajectoryReplayBuffer


def resolve_device(name: str | torch.device) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


class ODTTrainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        optim: OptimConfig,
        buffer: TrajectoryReplayBuffer,
        *,
        seed: int = 0,
        device: str | torch.device = "auto",
        task: str | None = None,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
    ):
        """`task` (a D4RL name) makes evaluations report D4RL-normalized returns beside raw ones."""
        self.model_cfg, self.optim, self.buffer, self.task = model_cfg, optim, buffer, task
        self.device = resolve_device(device)
        self.seed = int(seed)
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)

        self.model = DecisionTransformer(model_cfg).to(self.device)
        # weight decay on matrices and embeddings only (biases and LayerNorm gains excluded)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if optim.optimizer == "lamb":
            self.optimizer = Lamb(groups, lr=optim.learning_rate, weight_decouple=optim.decoupled_weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=optim.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._warmup)

        # lambda, the dual variable of the entropy constraint, learned as log lambda
        self.log_temperature = torch.tensor(math.log(optim.init_temperature), device=self.device, requires_grad=True)
        # one scalar: on CUDA the fused kernel is one launch instead of a dozen
        self.temperature_optimizer = torch.optim.Adam([self.log_temperature], lr=optim.temperature_lr, betas=(0.9, 0.999),
                                                      fused=self.device.type == "cuda")

        if state_mean is None or state_std is None:  # normalise with the offline data
            state_mean = buffer.observations.mean(axis=0)
            state_std = buffer.observations.std(axis=0) + 1e-6
        self._set_normaliser(state_mean, state_std)
        self.num_updates = 0

    def _warmup(self, step: int) -> float:
        """The learning-rate factor after `step` scheduler steps: linear up to warmup_steps, then 1."""
        return min(1.0, (step + 1) / max(1, self.optim.warmup_steps))

    def _set_normaliser(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.state_mean = np.asarray(mean, dtype=np.float32)
        self.state_std = np.asarray(std, dtype=np.float32)
        self._mean_t = torch.as_tensor(self.state_mean, device=self.device)
        self._std_t = torch.as_tensor(self.state_std, device=self.device)

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    @property
    def target_entropy(self) -> float:
        return float(self.optim.target_entropy if self.optim.target_entropy is not None else -self.model_cfg.act_dim)

    # one gradient step (Algorithm 2, lines 4-9) -------------------------------------------
    def _to_device(self, batch: Batch) -> dict[str, torch.Tensor | None]:
        pin = self.device.type == "cuda"

        def move(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(x)
            return t.pin_memory().to(self.device, non_blocking=True) if pin else t

        states = (move(batch.states) - self._mean_t) / self._std_t
        timesteps = move(np.minimum(batch.timesteps, self.model_cfg.max_ep_len - 1))
        mask = move(batch.mask) if batch.padded else None  # decided on the host: no device sync
        return {
            "states": states,
            "actions": move(batch.actions),
            "returns_to_go": move(batch.returns_to_go) * self.model_cfg.reward_scale,
            "timesteps": timesteps,
            "mask": mask,
        }

    def update(self) -> dict[str, torch.Tensor]:
        """One update of theta and one of lambda; metrics stay on the device (no sync)."""
        batch = self._to_device(self.buffer.sample(self.optim.batch_size, self.model_cfg.context_len, self.rng))
        actions, mask = batch["actions"], batch["mask"]
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            mean, log_std = self.model(
                batch["states"], actions, batch["returns_to_go"], batch["timesteps"], mask
            )

        if self.model_cfg.stochastic:
            dist = TanhNormal(mean.float(), log_std.float())
            loss, nll, entropy = policy_loss(dist, actions, mask, self.temperature)
        else:
            loss = deterministic_loss(mean.float(), actions, mask)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()

        metrics = {"loss": loss.detach(), "grad_norm": grad_norm.detach()}
        if self.model_cfg.stochastic:
            # dual descent on lambda towards the target entropy beta (Eq. 7)
            t_loss = temperature_loss(self.log_temperature, entropy, self.target_entropy)
            self.temperature_optimizer.zero_grad(set_to_none=True)
            t_loss.backward()
            self.temperature_optimizer.step()
            metrics |= {
                "nll": nll.detach(),
                "entropy": entropy.detach(),
                "temperature": self.temperature.detach(),
                "temperature_loss": t_loss.detach(),
            }
        metrics |= self._health(mean.detach().float(), None if log_std is None else log_std.detach().float(), actions, mask)
        self.num_updates += 1
        return metrics

    @torch.no_grad()
    def _health(self, mean: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor,
                mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """What a collapse shows first, as device tensors: the policy's spread and mean, the data at the clamp,
        LAMB's trust ratios (min/median/max over tensors)."""
        m = torch.ones(mean.shape[:2], device=mean.device) if mask is None else mask
        weight = (m / m.sum()).unsqueeze(-1)  # over real tokens only
        out = {"mean_abs": (mean.abs() * weight).sum() / mean.shape[-1],
               "actions_at_clamp": ((actions.abs() >= 1.0 - 1e-3).float() * weight).sum() / actions.shape[-1]}
        if log_std is not None:
            per_dim = (log_std * weight).sum((0, 1))  # (act_dim,): mean log-std of each action dim
            out |= {"log_std_mean": per_dim.mean(), "log_std_min": per_dim.min()}
        ratios = [s["trust_ratio"] for s in self.optimizer.state.values() if "trust_ratio" in s]
        if ratios:
            r = torch.stack([torch.as_tensor(x, dtype=torch.float32, device=mean.device) for x in ratios])
            out |= {"trust_ratio_min": r.min(), "trust_ratio_median": r.median(), "trust_ratio_max": r.max()}
        return out

    def train_updates(self, n: int, *, progress: bool = False, desc: str = "updates") -> dict[str, float]:
        """`n` updates; returns the metrics averaged over them (one host sync at the end)."""
        sums: dict[str, torch.Tensor] = {}
        for _ in tqdm(range(n), desc=desc, disable=not progress, leave=False, mininterval=1.0):
            for k, v in self.update().items():
                sums[k] = sums[k] + v if k in sums else v
        out = {k: float(v) / n for k, v in sums.items()} if n else {}
        out["learning_rate"] = self.scheduler.get_last_lr()[0]
        return out

    # acting ----------------------------------------------------------------------------
    def explore(self, envs: gym.vector.VectorEnv, cfg: FinetuneConfig) -> RolloutResult:
        """One episode per env with sampled actions, the exploration RTG g_online and the evaluation context length.

        Episode seeds come from the training RNG: each round explores anew.
        """
        seeds = self.rng.integers(0, 2**31 - 1, size=envs.num_envs).tolist()
        return rollout(self.model, envs, sample=True, target_return=cfg.g_online, seeds=seeds,
                       state_mean=self.state_mean, state_std=self.state_std, context_len=cfg.eval_context_len)

    def evaluate(self, envs: gym.vector.VectorEnv, cfg: EvalConfig, *, index: int) -> dict[str, float]:
        """One episode per env with mean actions, g_eval and the evaluation context length.

        Returns raw and (with a task) D4RL-normalized returns, mean and std over episodes.
        Episode seeds follow from (seed, index) alone, so a score never touches the training RNG.
        """
        seeds = eval_seeds(self.seed, index, envs.num_envs)
        result = evaluate(self.model, envs, target_return=cfg.g_eval, seeds=seeds, state_mean=self.state_mean,
                          state_std=self.state_std, context_len=cfg.eval_context_len)
        return score(result, self.task)

    # phases and seeds --------------------------------------------------------------------
    def use(self, optim: OptimConfig) -> None:
        """Continue with another phase's optimiser values; moments, temperature and warmup position are kept."""
        self.optim = optim
        self.scheduler.base_lrs = [optim.learning_rate] * len(self.optimizer.param_groups)
        self.optimizer.param_groups[0]["weight_decay"] = optim.weight_decay  # group 1 (biases, norms) stays 0
        factor = self._warmup(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = optim.learning_rate * factor
            if "weight_decouple" in group:  # LAMB
                group["weight_decouple"] = optim.decoupled_weight_decay
        for group in self.temperature_optimizer.param_groups:
            group["lr"] = optim.temperature_lr

    def reseed(self, seed: int) -> None:
        """Fresh training RNG streams (numpy and torch) and evaluation seeds for `seed`."""
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)

    def copy(self) -> "ODTTrainer":
        """An independent trainer in the same state (parameters, optimiser moments, buffer, RNGs).

        Through the state dict: optimisers drop their own attributes when deep-copied whole.
        """
        return ODTTrainer.from_state(copy.deepcopy(self.state_dict()), device=self.device)

    # checkpoints -------------------------------------------------------------------------
    def state_dict(self, *, buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue; `buffer=False` leaves out the replay buffer (offline data can be reloaded)."""
        state = {
            "model_config": dataclasses.asdict(self.model_cfg),
            "optim": {k: getattr(self.optim, k) for k in OptimConfig.model_fields},
            "task": self.task,
            "seed": self.seed,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "log_temperature": self.log_temperature.detach().clone(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "state_mean": torch.from_numpy(self.state_mean),
            "state_std": torch.from_numpy(self.state_std),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "num_updates": self.num_updates,
        }
        if buffer:
            state["buffer"] = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                               for k, v in self.buffer.state_dict().items()}
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        with torch.no_grad():
            self.log_temperature.copy_(state["log_temperature"])
        self.temperature_optimizer.load_state_dict(state["temperature_optimizer"])
        if "buffer" in state:
            self.buffer = _buffer_from_state(state)
        self._set_normaliser(state["state_mean"].numpy(), state["state_std"].numpy())
        self.seed = int(state["seed"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.num_updates = int(state["num_updates"])

    @classmethod
    def from_state(cls, state: dict[str, Any], *, optim: OptimConfig | None = None, device: str | torch.device = "auto",
                   data: Sequence[Trajectory] | None = None) -> "ODTTrainer":
        """Rebuild a trainer from `state_dict()`; `optim` switches to another phase's values (see `use`).

        A state saved without its buffer (a pretraining checkpoint) takes `data`, the offline trajectories.
        """
        if "buffer" in state:
            buffer = _buffer_from_state(state)
        elif data is not None:
            buffer = TrajectoryReplayBuffer(len(data), data)
        else:
            raise ValueError("this checkpoint holds no replay buffer (a pretraining checkpoint): pass data=, "
                             "the offline trajectories it was trained on")
        trainer = cls(ModelConfig(**state["model_config"]), OptimConfig(**state["optim"]), buffer,
                      seed=state["seed"], device=device, task=state["task"],
                      state_mean=state["state_mean"].numpy(), state_std=state["state_std"].numpy())
        trainer.load_state_dict(state)
        if optim is not None:
            trainer.use(optim)
        return trainer

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, {"trainer": self.state_dict()})

    @classmethod
    def load(cls, path: str | Path, *, optim: OptimConfig | None = None, device: str | torch.device = "auto",
             data: Sequence[Trajectory] | None = None) -> "ODTTrainer":
        """The trainer in a checkpoint written by `save` or by a loop of odt/loops.py (see `from_state`)."""
        return cls.from_state(load_checkpoint(path)["trainer"], optim=optim, device=device, data=data)

    def save_policy(self, path: str | Path, cfg: EvalConfig | None = None) -> Path:
        """Weights and what inference needs (and how to score it, given `cfg`), without optimiser or buffer."""
        return save_checkpoint(path, {
            "task": self.task,
            "model_config": dataclasses.asdict(self.model_cfg),
            "model": self.model.state_dict(),
            "state_mean": torch.from_numpy(self.state_mean),
            "state_std": torch.from_numpy(self.state_std),
            "evaluation": None if cfg is None else cfg.evaluation.model_dump(),
        })


def load_policy(path: str | Path) -> tuple[DecisionTransformer, dict[str, Any]]:
    """(model in eval mode, the rest of a `save_policy` file) for odt.evaluation.evaluate."""
    state = load_checkpoint(path)
    model = DecisionTransformer(ModelConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    info = {k: v for k, v in state.items() if k not in ("model", "model_config")}
    info["state_mean"], info["state_std"] = info["state_mean"].numpy(), info["state_std"].numpy()
    return model.eval(), info


def _buffer_from_state(state: dict[str, Any]) -> TrajectoryReplayBuffer:
    """Arrays are shared with the checkpoint's tensors, not copied."""
    return TrajectoryReplayBuffer.from_state_dict(
        {k: v.numpy() if torch.is_tensor(v) else v for k, v in state["buffer"].items()}
    )
