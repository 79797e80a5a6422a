"""The learner of both phases: model, LAMB and its schedule, the temperature, the replay buffer, RNGs.

Read `_step` top to bottom for one gradient step: NLL minus lambda * entropy for the
policy (LAMB, warmup, gradient clipping), then the dual step on log lambda (Adam); `update`
samples the segments it learns from. On CUDA the whole step replays from one captured CUDA
graph (`CudaGraphUpdate`). When to update, explore, evaluate and checkpoint is the loops'
business (odt/loops.py). A non-finite loss or gradient norm, or evaluation score, raises
`Diverged`: nothing non-finite becomes a result.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from pytorch_optimizer import Lamb
from tqdm.auto import tqdm

from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.data import Data, trajectories
from odt.config import EvalConfig, FinetuneConfig, OptimConfig
from odt.evaluation import RolloutResult, eval_seeds, evaluate, rollout, score
from odt.losses import TanhNormal, deterministic_loss, policy_loss, temperature_loss
from odt.model import DecisionTransformer, ModelConfig
from odt.optim import Lamb as CapturableLamb
from odt.optim import LinearWarmup
from odt.divergence import Diverged, check_scores, training_diverged
from odt.replay import Batch, TrajectoryReplayBuffer

GRAPH_WARMUP = 3  # eager updates of a new batch shape before its capture (PyTorch's recipe warms up 3)


def resolve_device(name: str | torch.device) -> torch.device:
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU; use device: auto or cpu")
    return torch.device(name)


@dataclass
class StagedBatch:
    """A batch in one float32 tensor (B, K, obs | act | rtg | timestep | mask), on its way to the device.

    On CUDA it was copied from pinned memory on a side stream (non-blocking): `ready` marks
    the copy's end, and `packed()` makes the stream that uses it wait for that, not the host.
    """

    tensor: torch.Tensor
    padded: bool  # decided on the host: no device sync
    ready: "torch.cuda.Event | None" = None

    def packed(self) -> torch.Tensor:
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.ready)
            self.tensor.record_stream(stream)  # allocated on the copy stream, used on this one
        return self.tensor


class CudaGraphUpdate:
    """The whole update (forward, policy loss, backward, clipping, LAMB, warmup, temperature step)
    for one batch shape, captured once as a CUDA graph: the rollout graph's design
    (odt.evaluation.CudaGraphPolicy) for training.

    Launched op by op from Python, an update of the paper's model is about 450 kernels and the
    GPU waits for the host most of the step (49 updates/s on an H200, the GPU busy about 2.5 ms
    of 14-18 ms). Replaying the graph launches them in one call. The batch is copied into a
    static buffer; the padded-mask path is always taken (a mask of ones is the unpadded case).
    Everything else the step reads and writes lives on the device and is used in place:
    parameters and gradients, LAMB's moments, step count and learning rate, the warmup's step
    count, log lambda and its Adam state. Python numbers (weight decay, the temperature's
    learning rate, base rate and warmup length, the clip norm, beta) are baked in: the trainer
    captures again after `use()` or a state load. The returned metrics are static tensors,
    overwritten by the next replay.
    """

    def __init__(self, step: Callable[[torch.Tensor], dict[str, torch.Tensor]], packed: torch.Tensor):
        self.packed = packed.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = step(self.packed)

    def __call__(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        self.packed.copy_(packed)
        self.graph.replay()
        return self.metrics


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
        cuda_graph: bool | None = None,
    ):
        """`task` (a D4RL name) makes evaluations report D4RL-normalized returns beside raw ones.

        `cuda_graph`: replay each update from a captured CUDA graph, with the multi-tensor LAMB
        and the learning rate on the device that capture needs (odt.optim); None: on CUDA.
        False: eager kernels with pytorch-optimizer's Lamb and LambdaLR (always so on the CPU
        by default). True on a CPU runs the capturable optimiser eagerly after a failed capture.
        """
        self.model_cfg, self.optim, self.buffer, self.task = model_cfg, optim, buffer, task
        self.device = resolve_device(device)
        # the capturable LAMB has pytorch-optimizer's default rule only: AdamW (DT) and LAMB with its decay
        # before the trust ratio run eagerly
        capturable = optim.optimizer == "lamb" and optim.decoupled_weight_decay
        self.cuda_graph = capturable and (self.device.type == "cuda" if cuda_graph is None else bool(cuda_graph))
        self.seed = int(seed)
        torch.manual_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)

        self.model = DecisionTransformer(model_cfg).to(self.device)
        # weight decay on matrices and embeddings only (biases and LayerNorm gains excluded)
        params = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        if self.cuda_graph:  # the same rule, with its step count and learning rate on the device
            self.optimizer = CapturableLamb(groups, lr=optim.learning_rate)
            self.scheduler = LinearWarmup(self.optimizer, lambda: self.optim.warmup_steps)
        else:
            if optim.optimizer == "lamb":
                self.optimizer = Lamb(groups, lr=optim.learning_rate, weight_decouple=optim.decoupled_weight_decay)
            else:
                self.optimizer = torch.optim.AdamW(groups, lr=optim.learning_rate)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._warmup)

        # lambda, the dual variable of the entropy constraint, learned as log lambda
        self.log_temperature = torch.tensor(math.log(optim.init_temperature), device=self.device, requires_grad=True)
        # one scalar: on CUDA the fused kernel is one launch instead of a dozen, and capturable
        cuda = self.device.type == "cuda"
        self.temperature_optimizer = torch.optim.Adam([self.log_temperature], lr=optim.temperature_lr, betas=(0.9, 0.999),
                                                      fused=cuda, capturable=cuda)

        if state_mean is None or state_std is None:  # normalise with the offline data
            state_mean = buffer.observations.mean(axis=0)
            state_std = buffer.observations.std(axis=0) + 1e-6
        self._set_normaliser(state_mean, state_std)
        self.num_updates = 0
        # on the CPU each update checks its loss and gradient norm before the optimiser step (a host sync is free
        # there); on CUDA, and on the capturable path that stands in for it, `train_updates` checks its block at
        # the end, from numbers recorded on the device: the update itself never waits for the device
        self.check_each_update = self.device.type != "cuda" and not self.cuda_graph
        # the update's CUDA graph: captured after GRAPH_WARMUP eager updates of its batch shape
        self._graph: CudaGraphUpdate | None | bool = None  # False: capture failed, eager
        self._graph_key: tuple | None = None
        self._warmups_left = GRAPH_WARMUP
        # a stream for batch copies and one for the eager warm-up updates
        self._streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)) \
            if self.cuda_graph and cuda else None

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

    def _sample(self) -> Batch:
        return self.buffer.sample(self.optim.batch_size, self.model_cfg.context_len, self.rng)

    def _stage(self, batch: Batch) -> dict[str, torch.Tensor | None] | StagedBatch:
        """The batch on its way to the device. Without the graph, `_to_device`. With it, one
        packed tensor; on CUDA copied from pinned memory on a side stream, so that the copy
        runs while the device still computes the update before."""
        if not self.cuda_graph:
            return self._to_device(batch)
        B, K, o = batch.states.shape
        a = batch.actions.shape[-1]
        cuda = self.device.type == "cuda"
        host = torch.empty((B, K, o + a + 3), dtype=torch.float32, pin_memory=cuda)
        for dst, src in ((host[..., :o], batch.states), (host[..., o:o + a], batch.actions),
                         (host[..., -3], batch.returns_to_go), (host[..., -1], batch.mask),
                         (host[..., -2], np.minimum(batch.timesteps, self.model_cfg.max_ep_len - 1))):  # exact < 2^24
            dst.copy_(torch.from_numpy(src))
        if not cuda:
            return StagedBatch(host, batch.padded)
        copy_stream = self._streams[0]
        with torch.cuda.stream(copy_stream):
            packed = host.to(self.device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(copy_stream)
        return StagedBatch(packed, batch.padded, ready)

    def _unpack(self, packed: torch.Tensor, padded: bool) -> dict[str, torch.Tensor | None]:
        """`_to_device`'s tensors from a packed batch, on the device (the same values)."""
        o, a = self.model_cfg.state_dim, self.model_cfg.act_dim
        return {
            "states": (packed[..., :o] - self._mean_t) / self._std_t,
            "actions": packed[..., o:o + a].contiguous(),
            "returns_to_go": packed[..., -3] * self.model_cfg.reward_scale,
            "timesteps": packed[..., -2].long(),
            "mask": packed[..., -1].contiguous() if padded else None,
        }

    def _step(self, batch: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
        """Algorithm 2, lines 5-9, on a batch on the device: what the CUDA graph holds."""
        actions, mask = batch["actions"], batch["mask"]
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda",
                            cache_enabled=not self.cuda_graph):  # the autocast cache is not capturable
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
            metrics |= {
                "nll": nll.detach(),
                "entropy": entropy.detach(),
                "temperature": self.temperature.detach(),
                "temperature_loss": t_loss.detach(),
            }
        metrics |= self._health(mean.detach().float(), None if log_std is None else log_std.detach().float(), actions, mask)
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
        if isinstance(self.optimizer, CapturableLamb):
            ratios = self.optimizer.trust_ratios
        else:  # pytorch-optimizer's Lamb keeps each tensor's last ratio in its state
            found = [s["trust_ratio"] for s in self.optimizer.state.values() if "trust_ratio" in s]
            ratios = torch.stack([torch.as_tensor(x, dtype=torch.float32, device=mean.device) for x in found]) \
                if found else None
        if ratios is not None:
            out |= {"trust_ratio_min": ratios.min(), "trust_ratio_median": ratios.median(), "trust_ratio_max": ratios.max()}
        return out

    def _update(self, batch: dict[str, torch.Tensor | None] | StagedBatch) -> dict[str, torch.Tensor]:
        """One update from a staged batch; from a graph, the metrics are valid until the next update."""
        metrics = self._step(batch) if not self.cuda_graph else self._graphed_update(batch)
        self.num_updates += 1
        return metrics

    def _graphed_update(self, staged: StagedBatch) -> dict[str, torch.Tensor]:
        """GRAPH_WARMUP eager updates of a batch shape, its capture, then replays (eager for good if capture fails)."""
        packed = staged.packed()
        key = tuple(packed.shape)
        if key != self._graph_key:  # a new shape, or the graph's baked-in values changed: warm up, capture
            self._graph, self._graph_key, self._warmups_left = None, key, GRAPH_WARMUP
        if self._graph is None and self._warmups_left == 0:
            try:
                self._graph = CudaGraphUpdate(lambda p: self._step(self._unpack(p, padded=True)), packed)
            except RuntimeError as err:  # a kernel that cannot be captured here: run eagerly, say so once
                warnings.warn(f"CUDA graph capture of the update failed ({err}); updates run eagerly", stacklevel=4)
                self._graph = False
        if self._graph:
            return self._graph(packed)
        if self._graph is None:
            self._warmups_left -= 1
        if self._graph is False or self._streams is None:  # capture failed (or a CPU): eager
            return self._step(self._unpack(packed, staged.padded))
        # a warm-up update: on a side stream, as PyTorch's capture recipe has it
        side, current = self._streams[1], torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            packed.record_stream(side)
            metrics = self._step(self._unpack(packed, staged.padded))
        current.wait_stream(side)
        return metrics

    @property
    def graphed(self) -> bool:
        """Whether updates replay a captured CUDA graph (after the warm-up of the batch shape)."""
        return bool(self._graph)

    def update(self) -> dict[str, torch.Tensor]:
        """One update of theta and one of lambda; metrics stay on the device (no sync).

        On the CPU a non-finite loss or gradient norm raises `Diverged` (before the step); on CUDA only
        `train_updates` checks.
        """
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
        sums: dict[str, torch.Tensor] = {}
        # on CUDA: each update's (loss, grad norm), read back only if the block's averages are not finite
        record = None if self.check_each_update or not n else torch.empty((n, 2), device=self.device)
        batch = self._stage(self._sample()) if n else None
        for i in tqdm(range(n), desc=desc, disable=not progress, leave=False, mininterval=1.0):
            metrics = self._update(batch)
            if record is not None:
                torch.stack((metrics["loss"].float(), metrics["grad_norm"].float()), out=record[i])
            if i + 1 < n:
                batch = self._stage(self._sample())
            for k, v in metrics.items():  # a graph's metrics are overwritten by its next replay: clone the first
                sums[k] = sums[k] + v if k in sums else v.clone()
        out = {k: float(v) / n for k, v in sums.items()} if n else {}
        if record is not None and not (math.isfinite(out["loss"]) and math.isfinite(out["grad_norm"])):
            first = int((~torch.isfinite(record)).any(1).nonzero()[0])
            loss, grad_norm = record[first].tolist()
            diverged = training_diverged(self.num_updates - n + first + 1, loss, grad_norm, self.optim.learning_rate) \
                or Diverged(self.num_updates, "mean loss", out["loss"], learning_rate=self.optim.learning_rate)
            raise diverged.named(self._who)
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
        A non-finite score raises `Diverged` (at the updates made so far): it never becomes a result.
        """
        seeds = eval_seeds(self.seed, index, envs.num_envs)
        result = evaluate(self.model, envs, target_return=cfg.g_eval, seeds=seeds, state_mean=self.state_mean,
                          state_std=self.state_std, context_len=cfg.eval_context_len)
        return check_scores(score(result, self.task), self.num_updates, self.optim.learning_rate, where=self._who)

    @property
    def _who(self) -> str:
        """How a `Diverged` names this trainer: task and seed."""
        return f"{self.task} seed {self.seed}" if self.task else f"seed {self.seed}"

    # phases and seeds --------------------------------------------------------------------
    def use(self, optim: OptimConfig) -> None:
        """Continue with another phase's optimiser values; moments, temperature and warmup position are kept."""
        self.optim = optim
        self.scheduler.base_lrs = [optim.learning_rate] * len(self.optimizer.param_groups)
        self.optimizer.param_groups[0]["weight_decay"] = optim.weight_decay  # group 1 (biases, norms) stays 0
        factor = self._warmup(self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            if torch.is_tensor(group["lr"]):  # odt.optim.Lamb: in place, where the update graph reads it
                group["lr"].fill_(optim.learning_rate * factor)
            else:
                group["lr"] = optim.learning_rate * factor
            if "weight_decouple" in group:  # pytorch-optimizer's LAMB
                group["weight_decouple"] = optim.decoupled_weight_decay
        for group in self.temperature_optimizer.param_groups:
            group["lr"] = optim.temperature_lr
        self._graph = self._graph_key = None  # the graph holds the old values: capture again

    def reseed(self, seed: int) -> None:
        """Fresh training RNG streams (numpy and torch) and evaluation seeds for `seed`."""
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)

    def copy(self) -> "ODTTrainer":
        """An independent trainer in the same state (parameters, optimiser moments, buffer, RNGs).

        Through the state dict: optimisers drop their own attributes when deep-copied whole.
        """
        return ODTTrainer.from_state(copy.deepcopy(self.state_dict()), device=self.device, cuda_graph=self.cuda_graph)

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
        self._graph = self._graph_key = None  # new optimiser state tensors: capture again

    @classmethod
    def from_state(cls, state: dict[str, Any], *, optim: OptimConfig | None = None, device: str | torch.device = "auto",
                   data: Data | None = None, cuda_graph: bool | None = None) -> "ODTTrainer":
        """Rebuild a trainer from `state_dict()`; `optim` switches to another phase's values (see `use`).

        A state saved without its buffer (a pretraining checkpoint) takes `data`, the offline trajectories.
        The state loads whichever LAMB either side uses (their state dicts share one layout).
        """
        if "buffer" in state:
            buffer = _buffer_from_state(state)
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
            trainer.use(optim)
        return trainer

    def save(self, path: str | Path) -> Path:
        return save_checkpoint(path, {"trainer": self.state_dict()})

    @classmethod
    def load(cls, path: str | Path, *, optim: OptimConfig | None = None, device: str | torch.device = "auto",
             data: Data | None = None, cuda_graph: bool | None = None) -> "ODTTrainer":
        """The trainer in a checkpoint written by `save` or by a loop of odt/loops.py (see `from_state`)."""
        return cls.from_state(load_checkpoint(path)["trainer"], optim=optim, device=device, data=data,
                              cuda_graph=cuda_graph)

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
