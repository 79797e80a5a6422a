"""Offline pretraining and online finetuning of ODT (paper Algorithms 1 and 2).

Read `update` top to bottom for one gradient step: sample segments, NLL minus
lambda * entropy for the policy (LAMB, warmup, gradient clipping), then the dual step on
log lambda (Adam). `online_round` is one iteration of Algorithm 1.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from pytorch_optimizer import Lamb
from tqdm.auto import tqdm

from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import TrainConfig
from odt.evaluation import RolloutResult, evaluate, rollout
from odt.losses import TanhNormal, deterministic_loss, policy_loss, temperature_loss
from odt.model import DecisionTransformer, ModelConfig
from odt.replay import Batch, TrajectoryReplayBuffer

MetricsCallback = Callable[[dict[str, float]], None]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


class ODTTrainer:
    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        buffer: TrajectoryReplayBuffer,
        *,
        state_mean: np.ndarray | None = None,
        state_std: np.ndarray | None = None,
    ):
        self.model_cfg, self.cfg, self.buffer = model_cfg, cfg, buffer
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)

        self.model = DecisionTransformer(model_cfg).to(self.device)
        # weight decay on matrices and embeddings only (biases and LayerNorm gains excluded)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = Lamb(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.learning_rate,
        )
        warmup = max(1, cfg.warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: min(1.0, (step + 1) / warmup))

        # lambda, the dual variable of the entropy constraint, learned as log lambda
        self.log_temperature = torch.tensor(math.log(cfg.init_temperature), device=self.device, requires_grad=True)
        # one scalar: on CUDA the fused kernel is one launch instead of a dozen
        self.temperature_optimizer = torch.optim.Adam([self.log_temperature], lr=cfg.temperature_lr, betas=(0.9, 0.999),
                                                      fused=self.device.type == "cuda")
        self.target_entropy = float(cfg.target_entropy if cfg.target_entropy is not None else -model_cfg.act_dim)

        if state_mean is None or state_std is None:  # normalise with the offline data
            state_mean = buffer.observations.mean(axis=0)
            state_std = buffer.observations.std(axis=0) + 1e-6
        self.state_mean = np.asarray(state_mean, dtype=np.float32)
        self.state_std = np.asarray(state_std, dtype=np.float32)
        self._mean_t = torch.as_tensor(self.state_mean, device=self.device)
        self._std_t = torch.as_tensor(self.state_std, device=self.device)

        self.num_updates = 0
        self.online_samples = 0
        self.rounds = 0
        self.online = False
        self.history: list[dict[str, float]] = []  # evaluations during finetuning

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

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
            "returns_to_go": move(batch.returns_to_go) * self.cfg.reward_scale,
            "timesteps": timesteps,
            "mask": mask,
        }

    def update(self) -> dict[str, torch.Tensor]:
        """One update of theta and one of lambda; metrics stay on the device (no sync)."""
        batch = self._to_device(self.buffer.sample(self.cfg.batch_size, self.model_cfg.context_len, self.rng))
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
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
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
        self.num_updates += 1
        return metrics

    def train_updates(self, n: int, *, progress: bool = False, desc: str = "updates") -> dict[str, float]:
        """`n` updates; returns the metrics averaged over them (one host sync at the end)."""
        sums: dict[str, torch.Tensor] = {}
        for _ in tqdm(range(n), desc=desc, disable=not progress, leave=False, mininterval=1.0):
            for k, v in self.update().items():
                sums[k] = sums[k] + v if k in sums else v
        out = {k: float(v) / n for k, v in sums.items()} if n else {}
        out["learning_rate"] = self.scheduler.get_last_lr()[0]
        return out

    # offline pretraining -----------------------------------------------------------------
    def pretrain(
        self,
        total_updates: int | None = None,
        *,
        log_every: int = 100,
        callback: MetricsCallback | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every: int | None = None,
        progress: bool = True,
    ) -> None:
        """Update until `num_updates` reaches `total_updates` (resumes where a checkpoint left off)."""
        total = self.cfg.pretrain_updates if total_updates is None else total_updates
        with tqdm(total=total, initial=self.num_updates, desc="pretrain", disable=not progress, mininterval=1.0) as bar:
            while self.num_updates < total:
                n = min(log_every, total - self.num_updates)
                metrics = self.train_updates(n)
                bar.update(n)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
                if callback:
                    callback({"step": self.num_updates, **metrics})
                if checkpoint_path and checkpoint_every and (
                    self.num_updates % checkpoint_every < n or self.num_updates >= total
                ):
                    self.save(checkpoint_path)

    # online finetuning (Algorithm 1) -----------------------------------------------------
    def start_online(self) -> None:
        """Replay buffer <- the top `buffer_size` trajectories of the offline data."""
        if not self.online:
            self.buffer = TrajectoryReplayBuffer(self.cfg.buffer_size, self.buffer.trajectories)
            self.online = True

    def explore(self, envs: gym.vector.VectorEnv) -> RolloutResult:
        """Roll out with sampled actions and the exploration RTG g_online."""
        seeds = self.rng.integers(0, 2**31 - 1, size=envs.num_envs).tolist()
        return rollout(self.model, envs, sample=True, target_return=self.cfg.g_online, seeds=seeds, **self._rollout_kwargs())

    def online_round(self, envs: gym.vector.VectorEnv) -> dict[str, float]:
        """One round: explore, add to the buffer (FIFO, hindsight RTGs), `updates_per_round` updates."""
        self.start_online()
        result = self.explore(envs)
        self.buffer.add(result.trajectories)
        self.online_samples += int(result.lengths.sum())
        metrics = self.train_updates(self.cfg.updates_per_round)
        self.rounds += 1
        return {
            **metrics,
            "online_samples": self.online_samples,
            "round": self.rounds,
            "explore_return": float(result.returns.mean()),
            "explore_length": float(result.lengths.mean()),
        }

    def evaluate(self, envs: gym.vector.VectorEnv, *, index: int | None = None) -> RolloutResult:
        """Mean actions, g_eval, the evaluation context length; seeds that do not touch the training RNG."""
        index = self.rounds if index is None else index
        seeds = [(self.cfg.seed * 1_000_003 + index * envs.num_envs + i) % 2**31 for i in range(envs.num_envs)]
        return evaluate(self.model, envs, target_return=self.cfg.g_eval, seeds=seeds, **self._rollout_kwargs())

    def finetune(
        self,
        envs: gym.vector.VectorEnv,
        eval_envs: gym.vector.VectorEnv,
        *,
        callback: MetricsCallback | None = None,
        score: Callable[[np.ndarray], np.ndarray] | None = None,
        checkpoint_path: str | None = None,
        checkpoint_every_rounds: int | None = None,
        progress: bool = True,
    ) -> list[dict[str, float]]:
        """Rounds until `online_samples` reaches the budget; evaluates every `eval_every_rounds`.

        Returns the evaluation history (also kept in checkpoints), one dict per evaluation.
        """
        budget = self.cfg.online_samples
        with tqdm(total=budget, initial=min(self.online_samples, budget), desc="finetune", unit="step",
                  disable=not progress, mininterval=1.0) as bar:
            while self.online_samples < budget:
                before = self.online_samples
                metrics = self.online_round(envs)
                bar.update(min(self.online_samples, budget) - min(before, budget))
                last = self.online_samples >= budget
                if self.rounds % self.cfg.eval_every_rounds == 0 or last:
                    result = self.evaluate(eval_envs)
                    entry = {
                        "round": float(self.rounds),
                        "online_samples": float(self.online_samples),
                        "eval_return": float(result.returns.mean()),
                        "eval_return_std": float(result.returns.std()),
                    }
                    if score is not None:
                        normalized = score(result.returns)
                        entry |= {"eval_normalized": float(np.mean(normalized)),
                                  "eval_normalized_std": float(np.std(normalized))}
                    self.history.append(entry)
                    metrics |= entry
                    bar.set_postfix(eval_return=f"{entry['eval_return']:.1f}", refresh=False)
                if callback:
                    callback({"step": self.num_updates, **metrics})
                if checkpoint_path and checkpoint_every_rounds and (
                    self.rounds % checkpoint_every_rounds == 0 or last
                ):
                    self.save(checkpoint_path)
        return self.history

    def _rollout_kwargs(self) -> dict[str, Any]:
        return {
            "reward_scale": self.cfg.reward_scale,
            "state_mean": self.state_mean,
            "state_std": self.state_std,
            "context_len": self.cfg.eval_context_len,
        }

    def set_optim_hparams(self, *, learning_rate: float, weight_decay: float) -> None:
        """Switch to another phase's learning rate and weight decay, keeping optimiser state."""
        self.scheduler.base_lrs = [learning_rate] * len(self.optimizer.param_groups)
        self.optimizer.param_groups[0]["weight_decay"] = weight_decay  # group 1 (biases, norms) stays 0
        warmup_factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate * warmup_factor

    # checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {
            "model_config": dataclasses.asdict(self.model_cfg),
            "train_config": self.cfg.model_dump(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "log_temperature": self.log_temperature.detach().clone(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "buffer": {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
                       for k, v in self.buffer.state_dict().items()},
            "state_mean": torch.from_numpy(self.state_mean),
            "state_std": torch.from_numpy(self.state_std),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "counters": {"num_updates": self.num_updates, "online_samples": self.online_samples,
                         "rounds": self.rounds, "online": self.online},
            "history": list(self.history),
        }
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
        self.buffer = _buffer_from_state(state)
        self.state_mean = state["state_mean"].numpy()
        self.state_std = state["state_std"].numpy()
        self._mean_t = torch.as_tensor(self.state_mean, device=self.device)
        self._std_t = torch.as_tensor(self.state_std, device=self.device)
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        c = state["counters"]
        self.num_updates, self.online_samples = int(c["num_updates"]), int(c["online_samples"])
        self.rounds, self.online = int(c["rounds"]), bool(c["online"])
        self.history = list(state["history"])

    def save(self, path: str) -> None:
        save_checkpoint(path, self.state_dict())

    @classmethod
    def from_checkpoint(cls, path: str, cfg: TrainConfig | None = None) -> "ODTTrainer":
        """Rebuild a trainer from a checkpoint; `cfg` overrides the stored training config.

        A new learning rate or weight decay in `cfg` (the finetuning phase's) is applied to
        the restored optimiser, whose moments and warmup position are kept.
        """
        state = load_checkpoint(path)
        model_cfg = ModelConfig(**state["model_config"])
        stored = TrainConfig(**state["train_config"])
        cfg = cfg or stored
        trainer = cls(model_cfg, cfg, _buffer_from_state(state), state_mean=state["state_mean"].numpy(), state_std=state["state_std"].numpy())
        trainer.load_state_dict(state)
        if (cfg.learning_rate, cfg.weight_decay) != (stored.learning_rate, stored.weight_decay):
            trainer.set_optim_hparams(learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay)
        return trainer


def _buffer_from_state(state: dict[str, Any]) -> TrajectoryReplayBuffer:
    """Arrays are shared with the checkpoint's tensors, not copied."""
    return TrajectoryReplayBuffer.from_state_dict(
        {k: v.numpy() if torch.is_tensor(v) else v for k, v in state["buffer"].items()}
    )
