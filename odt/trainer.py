"""The learner of both phases: model, LAMB and its schedule, the temperature, the replay buffer, RNGs.

Read `_step` top to bottom for one gradient step: NLL minus lambda * entropy for the
policy (LAMB, warmup, gradient clipping), then the dual step on log lambda (Adam); `update`
samples the segments it learns from. On CUDA the whole step replays from one captured CUDA
graph, a wrapper taken with one line (odt/update_graph.py). When to update, explore,
evaluate and checkpoint is the loops' business (odt/loops.py; they write `state_dict()` to
the checkpoint file). A non-finite loss or gradient norm, or evaluation score, raises
`Diverged`: nothing non-finite becomes a result.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

from odt import optim as optimisers
from odt.checkpoint import tensors
from odt.config import EvalConfig, FinetuneConfig, ModelConfig, OptimConfig
from odt.divergence import check_scores, training_diverged
from odt.evaluation import RolloutResult, eval_seeds, evaluate, rollout, score
from odt.losses import TanhNormal, deterministic_loss, health, policy_loss, temperature_loss
from odt.model import DecisionTransformer
from odt.replay import Batch, TrajectoryReplayBuffer
from odt.runs import Average, Data, resolve_device, trajectories
from odt.update_graph import GraphedUpdate, StagedBatch, to_device


class ODTTrainer:
    def __init__(self, model_cfg: ModelConfig, optim: OptimConfig, buffer: TrajectoryReplayBuffer, *, seed: int = 0,
                 device: str | torch.device = "auto", task: str | None = None, state_mean: np.ndarray | None = None,
                 state_std: np.ndarray | None = None, cuda_graph: bool | None = None):
        """`task` (a D4RL name) makes evaluations report D4RL-normalized returns beside raw ones; the state
        normaliser defaults to the buffer's (the offline data's).

        `cuda_graph`: replay each update from a captured CUDA graph, with the LAMB and the learning rate
        on the device that capture needs (odt.optim); None: on CUDA. False: eager, with the libraries'
        optimisers (always so on the CPU by default). True on a CPU: the capturable optimiser, eagerly.
        """
        self.model_cfg, self.optim, self.buffer, self.task = model_cfg, optim, buffer, task
        self.device = resolve_device(device)
        cuda = self.device.type == "cuda"
        self.cuda_graph = optimisers.capturable(optim) and (cuda if cuda_graph is None else bool(cuda_graph))
        self.seed = int(seed)
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)

        self.model = DecisionTransformer(model_cfg).to(self.device)
        # weight decay on matrices and embeddings only (biases and LayerNorm gains excluded)
        params = [p for p in self.model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": optim.weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.optimizer, self.scheduler = optimisers.optimizer(groups, optim, lambda: self.optim.warmup_steps,
                                                              on_device=self.cuda_graph)

        # lambda, the dual variable of the entropy constraint, learned as log lambda
        init = optim.init_temperature or OptimConfig().init_temperature  # a FinetuneConfig's may be None
        self.log_temperature = torch.tensor(math.log(init), device=self.device, requires_grad=True)
        # one scalar: on CUDA the fused kernel is one launch instead of a dozen, and capturable
        self.temperature_optimizer = torch.optim.Adam([self.log_temperature], lr=optim.temperature_lr,
                                                      betas=(0.9, 0.999), fused=cuda, capturable=cuda)

        if state_mean is None or state_std is None:  # normalise with the offline data
            state_mean = buffer.observations.mean(axis=0)
            state_std = buffer.observations.std(axis=0) + 1e-6
        self._set_normaliser(state_mean, state_std)
        self.num_updates = 0
        # on the CPU each update checks its loss and gradient norm before the optimiser step (a host sync is free
        # there); on CUDA, and on the capturable path that stands in for it, `train_updates` checks its block at
        # the end, from numbers recorded on the device: the update itself never waits for the device
        self.check_each_update = not cuda and not self.cuda_graph
        # opt-in: the update replayed from a CUDA graph (odt/update_graph.py); None: `_step` runs eagerly
        self._graph = GraphedUpdate(self._step, self.device, model_cfg.state_dim, model_cfg.act_dim) \
            if self.cuda_graph else None

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
    def _sample(self) -> Batch:
        batch = self.buffer.sample(self.optim.batch_size, self.model_cfg.context_len, self.rng)
        # the timestep embedding's table ends at max_ep_len - 1
        return dataclasses.replace(batch, timesteps=np.minimum(batch.timesteps, self.model_cfg.max_ep_len - 1))

    def _stage(self, batch: Batch) -> dict[str, torch.Tensor | None] | StagedBatch:
        """The batch on its way to the device: as tensors, or packed for the graph."""
        return self._graph.stage(batch) if self._graph is not None else to_device(batch, self.device)

    def _step(self, batch: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Algorithm 2, lines 5-9, on a batch on the device: what the CUDA graph holds."""
        states = (batch["states"] - self._mean_t) / self._std_t
        returns_to_go = batch["returns_to_go"] * self.model_cfg.reward_scale
        actions, mask = batch["actions"], batch["mask"]
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda",
                            cache_enabled=not self.cuda_graph):  # the autocast cache is not capturable
            mean, log_std = self.model(states, actions, returns_to_go, batch["timesteps"], mask)

        if self.model_cfg.stochastic:
            dist = TanhNormal(mean.float(), log_std.float())
            loss, nll, entropy = policy_loss(dist, actions, mask, self.temperature)
        else:
            loss = deterministic_loss(mean.float(), actions, mask)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.optim.grad_clip)
        if self.check_each_update:  # before the step: a non-finite gradient never reaches the weights
            diverged = training_diverged(self.num_updates + 1, float(loss.detach()), float(grad_norm),
                                         self.optim.learning_rate)
            if diverged is not None:
                raise diverged.named(self._who)
        self.optimizer.step()
        self.scheduler.step()

        metrics = {"loss": loss.detach(), "grad_norm": grad_norm.detach()}
        if self.model_cfg.stochastic:
            # dual descent on lambda towards the target entropy beta (Eq. 7)
            t_loss = temperature_loss(self.log_temperature, entropy, self.target_entropy)
            self.temperature_optimizer.zero_grad(set_to_none=True)
            t_loss.backward()
            self.temperature_optimizer.step()
            metrics |= {"nll": nll.detach(), "entropy": entropy.detach(), "temperature": self.temperature.detach(),
                        "temperature_loss": t_loss.detach()}
        ratios = getattr(self.optimizer, "trust_ratios", None)  # either LAMB's (odt.optim); AdamW has none
        return metrics | health(mean.detach().float(), None if log_std is None else log_std.detach().float(), actions,
                                mask, ratios)

    def _update(self, batch: dict[str, torch.Tensor | None] | StagedBatch) -> dict[str, torch.Tensor]:
        """One update from a staged batch; from a graph, the metrics are valid until the next update."""
        metrics = self._step(batch) if self._graph is None else self._graph(batch)
        self.num_updates += 1
        return metrics

    @property
    def graphed(self) -> bool:
        """Whether updates replay a captured CUDA graph (after the warm-up of the batch shape)."""
        return self._graph is not None and self._graph.graphed

    def update(self) -> dict[str, torch.Tensor]:
        """One update of theta and one of lambda; metrics stay on the device (no sync). On the CPU a non-finite
        loss or gradient norm raises `Diverged` (before the step); on CUDA only `train_updates` checks."""
        metrics = self._update(self._stage(self._sample()))
        return {k: v.clone() for k, v in metrics.items()} if self.graphed else metrics  # a graph's are static

    def train_updates(self, n: int, *, progress: bool = False, desc: str = "updates") -> dict[str, float]:
        """`n` updates; returns the metrics averaged over them (one host sync at the end).

        One batch ahead: batch k + 1 is sampled and sent after update k is queued, so on a GPU
        the host's share runs while the device computes. The numpy stream (sampling) and the
        torch stream (dropout, rsample) are separate, so the numbers are those of update() n times.

        A non-finite loss or gradient norm raises `Diverged` naming its update: on the CPU at
        that update, before its step; on CUDA after the block, from each update's loss and
        gradient norm recorded on the device (no extra host sync), with the weights then unusable.
        """
        average = Average(watch=() if self.check_each_update else ("loss", "grad_norm"))
        batch = self._stage(self._sample()) if n else None
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False, mininterval=1.0):
            metrics = self._update(batch)
            if i + 1 < n:
                batch = self._stage(self._sample())
            average.add(metrics)
        out = average.pop()
        fault = average.first_non_finite()
        if fault is not None:
            after, values = fault
            raise training_diverged(self.num_updates - after, values["loss"], values["grad_norm"],
                                    self.optim.learning_rate).named(self._who)
        out["learning_rate"] = self.scheduler.get_last_lr()[0]
        return out

    # acting ----------------------------------------------------------------------------
    def explore(self, envs: gym.vector.VectorEnv, cfg: FinetuneConfig, g_online: float | None = None) -> RolloutResult:
        """One episode per env with sampled actions, the exploration RTG (`g_online`; default `cfg.g_online`) and
        the evaluation context length. Episode seeds come from the training RNG: each round explores anew."""
        seeds = self.rng.integers(0, 2**31 - 1, size=envs.num_envs).tolist()
        target = cfg.g_online if g_online is None else g_online
        return rollout(self.model, envs, sample=True, target_return=target, seeds=seeds,
                       state_mean=self.state_mean, state_std=self.state_std, context_len=cfg.eval_context_len)

    def evaluate(self, envs: gym.vector.VectorEnv, cfg: EvalConfig, *, index: int) -> dict[str, float]:
        """One episode per env with mean actions, g_eval and the evaluation context length: raw and (with a task)
        D4RL-normalized returns, mean and std over episodes. Episode seeds follow from (seed, index) alone, so a
        score never touches the training RNG. A non-finite score raises `Diverged`: it never becomes a result."""
        seeds = eval_seeds(self.seed, index, envs.num_envs)
        result = evaluate(self.model, envs, target_return=cfg.g_eval, seeds=seeds, state_mean=self.state_mean,
                          state_std=self.state_std, context_len=cfg.eval_context_len)
        return check_scores(score(result, self.task), self.num_updates, self.optim.learning_rate, where=self._who)

    @property
    def _who(self) -> str:
        """How a `Diverged` names this trainer: task and seed."""
        return f"{self.task} seed {self.seed}" if self.task else f"seed {self.seed}"

    # phases and seeds --------------------------------------------------------------------
    def switch_phase(self, optim: OptimConfig, *, restart_warmup: bool = False) -> None:
        """Continue with another phase's optimiser values (learning rate, weight decay, warmup length, the
        temperature's rate); LAMB's moments, the temperature and the warmup's position are kept (`restart_warmup`:
        the warmup starts again from its first step)."""
        self.optim = optim
        optimisers.switch_values(self.optimizer, self.scheduler, optim, restart_warmup=restart_warmup)
        for group in self.temperature_optimizer.param_groups:
            group["lr"] = optim.temperature_lr
        if self._graph is not None:
            self._graph.reset()  # the graph holds the old values: capture again

    def reseed(self, seed: int) -> None:
        """Fresh training RNG streams (numpy and torch) and evaluation seeds for `seed`."""
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)

    def copy(self) -> ODTTrainer:
        """An independent trainer in the same state (parameters, optimiser moments, buffer, RNGs); through the
        state dict, as optimisers drop their own attributes when deep-copied whole."""
        return ODTTrainer.from_state(copy.deepcopy(self.state_dict()), device=self.device, cuda_graph=self.cuda_graph)

    # state (the loops write it to their checkpoint files) ------------------------------------
    def state_dict(self, *, buffer: bool = True) -> dict[str, Any]:
        """Everything needed to continue; `buffer=False` leaves out the replay buffer (offline data can be reloaded).
        Tensors, numbers and strings only, so that a checkpoint loads with weights_only=True."""
        state = {
            "model_config": dataclasses.asdict(self.model_cfg),
            "optim": self.optim.model_dump(include=set(OptimConfig.model_fields), exclude_none=True),
            "task": self.task, "seed": self.seed, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "log_temperature": self.log_temperature.detach().clone(),
            "temperature_optimizer": self.temperature_optimizer.state_dict(),
            "state_mean": torch.from_numpy(self.state_mean), "state_std": torch.from_numpy(self.state_std),
            "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
            "num_updates": self.num_updates,
        }
        if buffer:
            state["buffer"] = tensors(self.buffer.state_dict())
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
            self.buffer = TrajectoryReplayBuffer.from_state_dict(state["buffer"])
        self._set_normaliser(state["state_mean"].numpy(), state["state_std"].numpy())
        self.seed = int(state["seed"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.num_updates = int(state["num_updates"])
        if self._graph is not None:
            self._graph.reset()  # new optimiser state tensors: capture again

    @classmethod
    def from_state(cls, state: dict[str, Any], *, optim: OptimConfig | None = None, device: str | torch.device = "auto",
                   data: Data | None = None, cuda_graph: bool | None = None) -> ODTTrainer:
        """Rebuild a trainer from `state_dict()`; `optim`: continue with those values (see `switch_phase`).

        A state saved without its buffer (a pretraining checkpoint) takes `data`, the offline trajectories.
        The state loads whichever LAMB either side uses (their state dicts share one layout).
        """
        if "buffer" in state:
            buffer = TrajectoryReplayBuffer.from_state_dict(state["buffer"])
        elif data is not None:
            data = trajectories(data, state["task"])
            buffer = TrajectoryReplayBuffer(len(data), data)
        else:
            raise ValueError("this checkpoint holds no replay buffer (a pretraining checkpoint): pass data=, "
                             "the offline trajectories it was trained on")
        trainer = cls(ModelConfig(**state["model_config"]), OptimConfig(**state["optim"]), buffer,
                      seed=state["seed"], device=device, task=state["task"],
                      state_mean=state["state_mean"].numpy(), state_std=state["state_std"].numpy(),
                      cuda_graph=cuda_graph)
        trainer.load_state_dict(state)
        if optim is not None:
            trainer.switch_phase(optim)
        return trainer
