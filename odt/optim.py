"""The trainer's optimiser and warmup, chosen in one place (`optimizer`), and the LAMB a CUDA graph can hold.

pytorch-optimizer's `Lamb` keeps its step count and learning rate as Python numbers and
computes the step size on the host, so a captured step would replay the first step's
values for ever. `Lamb` here is the same update rule (pytorch-optimizer 4.1.0, default
variant, as ODTTrainer uses it), written with multi-tensor `torch._foreach_*` operations
and no host-side branch: the step count and the learning rate are device tensors read and
written in place. `LinearWarmup` is LambdaLR with ODT's warmup factor, its step count and
learning rate on the device too. Their state dicts have the library layouts
(pytorch-optimizer's Lamb, torch's LambdaLR), so a checkpoint moves between a CPU trainer
(the library ones) and a CUDA trainer (these). tests/test_optim.py checks the rule against
pytorch-optimizer's over 100 steps.

The CPU keeps the library's Lamb (`optimizer` chooses). There `Lamb` here is as fast (measured
10.0 vs 10.2 ms per update at the median, the tiny profile's model, one thread) but not
bit-identical: its learning rate and step size are float32 device tensors, applied as
`u * -step_size` then `p + u`, where the library applies `p + alpha * u` with a Python float that
a captured graph could not update; parameters are 4e-7 apart after 200 updates. The CPU's results
stay the ones the library gives. Both LAMBs give `trust_ratios` the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_optimizer
import torch

from odt.config import OptimConfig

# pytorch-optimizer's Lamb options, at the values of the variant implemented here; a state
# dict carries them, so a library Lamb loads ours, and ours refuses any other variant
LIBRARY_VARIANT = {"weight_decouple": True, "fixed_decay": False, "rectify": False, "grad_averaging": True,
                   "max_grad_norm": 1.0, "adam": False, "foreach": None}
DIAGNOSTICS = ("weight_norm", "adam_norm", "trust_ratio")  # per-parameter values the library stores and never reads


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2020) as pytorch-optimizer 4.1.0 computes it with default arguments.

    Per group, at step t (counted per group) with learning rate lr:
        p      <- p * (1 - lr * weight_decay)                       decoupled weight decay
        m      <- beta1 m + (1 - beta1) g,   v <- beta2 v + (1 - beta2) g^2
        u      =  m / (sqrt(v) + eps)                                 (no second-moment bias correction)
        r      =  min(|p|, 10) / (|u| + eps), or 1 where either norm is 0   the trust ratio
        p      <- p - lr / (1 - beta1^t) * r * u
    Parameters without a gradient are skipped (no decay either), as the library does.
    """

    clamp = 10.0  # the library's bound on the weight norm in the trust ratio

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0,
                 eps: float = 1e-6):
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay, "eps": eps})
        for group in self.param_groups:
            device = group["params"][0].device
            group.setdefault("initial_lr", float(group["lr"]))  # LambdaLR's key: the rate it starts from, exactly
            group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device).clone()
            group["step"] = torch.zeros((), dtype=torch.float32, device=device)
        self.trust_ratios: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ratios = []
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if not self.state[p]:  # created by the first (eager) step; never while capturing
                    if p.is_cuda and torch.cuda.is_current_stream_capturing():
                        raise RuntimeError("Lamb state created during CUDA graph capture: run one step eagerly first")
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            ratios.append(self._step_group(group, params))
        self.trust_ratios = torch.cat(ratios) if ratios else None  # each tensor's, for the trainer's health metrics
        return loss

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor]) -> torch.Tensor:
        grads = [p.grad for p in params]
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
        (beta1, beta2), eps, wd, lr = group["betas"], group["eps"], group["weight_decay"], group["lr"]

        group["step"].add_(1.0)
        step_size = lr / (1.0 - torch.pow(beta1, group["step"]))  # first-moment bias correction only
        if wd != 0.0:
            torch._foreach_mul_(params, 1.0 - wd * lr)
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

        updates = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_add_(updates, eps)
        torch._foreach_reciprocal_(updates)
        torch._foreach_mul_(updates, exp_avgs)

        weight_norms = torch.stack(torch._foreach_norm(params)).clamp_(max=self.clamp)
        update_norms = torch.stack(torch._foreach_norm(updates))
        trust_ratios = torch.where((weight_norms != 0) & (update_norms != 0), weight_norms / (update_norms + eps), 1.0)
        torch._foreach_mul_(updates, trust_ratios.unbind())
        torch._foreach_mul_(updates, -step_size)
        torch._foreach_add_(params, updates)
        return trust_ratios

    # checkpoints: pytorch-optimizer's layout (step and lr as numbers, its variant options) --------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["param_groups"] = [{**LIBRARY_VARIANT, **g, "lr": float(g["lr"]), "step": int(g["step"])}
                                 for g in state["param_groups"]]
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for g in state_dict["param_groups"]:
            other = {k: g[k] for k in LIBRARY_VARIANT if k in g and g[k] != LIBRARY_VARIANT[k]}
            if other:
                raise ValueError("odt.optim.Lamb implements pytorch-optimizer's default Lamb only; "
                                 f"this state has {other}")
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            device = group["params"][0].device
            for k in LIBRARY_VARIANT:
                group.pop(k, None)
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
            group["step"] = torch.tensor(float(group.get("step", 0)), dtype=torch.float32, device=device)
        for s in self.state.values():
            for k in DIAGNOSTICS:
                s.pop(k, None)


class LinearWarmup:
    """LambdaLR(optimizer, t -> min(1, (t + 1) / warmup_steps)) with t and the rates on the device.

    `step()` is device operations only, so a CUDA graph can hold it; `base_lrs` and
    `warmup_steps()` are read when it runs (a captured step keeps the values it was captured
    with). The optimiser's groups must hold their rate as a device tensor (odt.optim.Lamb).
    What the trainer uses of LambdaLR is here: step, get_last_lr, last_epoch, base_lrs, and a
    state dict in LambdaLR's layout.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: Callable[[], int]):
        self.optimizer = optimizer
        self.warmup_steps = warmup_steps
        self.base_lrs = [float(g.get("initial_lr", g["lr"])) for g in optimizer.param_groups]
        self._t = torch.zeros((), dtype=torch.float32, device=optimizer.param_groups[0]["lr"].device)
        self._set_rates()  # LambdaLR's initial step: t = 0, rate = base * factor(0)

    def _set_rates(self) -> None:
        factor = ((self._t + 1.0) / max(1, self.warmup_steps())).clamp(max=1.0)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"].copy_(factor * base)

    def step(self) -> None:
        self._t.add_(1.0)
        self._set_rates()

    @property
    def last_epoch(self) -> int:
        return int(self._t)  # reads the device: for phase changes and checkpoints, not the update loop

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict[str, Any]:
        n = len(self.base_lrs)
        return {"base_lrs": list(self.base_lrs), "last_epoch": self.last_epoch, "_step_count": self.last_epoch + 1,
                "_is_initial": False, "_get_lr_called_within_step": False, "_last_lr": self.get_last_lr(),
                "lr_lambdas": [None] * n}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """LambdaLR's state; the rates themselves come with the optimiser's state, as LambdaLR's do."""
        self.base_lrs = list(state["base_lrs"])
        self._t.fill_(float(state["last_epoch"]))


class LibraryLamb(pytorch_optimizer.Lamb):
    """pytorch-optimizer's Lamb, with `trust_ratios` as `Lamb` has them (the library keeps each tensor's in its
    state)."""

    @property
    def trust_ratios(self) -> torch.Tensor | None:
        found = [s["trust_ratio"] for s in self.state.values() if "trust_ratio" in s]
        if not found:
            return None
        device = self.param_groups[0]["params"][0].device
        return torch.stack([torch.as_tensor(x, dtype=torch.float32, device=device) for x in found])


def capturable(cfg: OptimConfig) -> bool:
    """Whether `Lamb` here implements `cfg`'s rule: pytorch-optimizer's default LAMB only (AdamW, the DT's, and LAMB
    with its decay before the trust ratio run eagerly, with the library's optimisers)."""
    return cfg.optimizer == "lamb" and cfg.decoupled_weight_decay


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The learning-rate factor after `step` scheduler steps: linear up to warmup_steps, then 1."""
    return min(1.0, (step + 1) / max(1, warmup_steps))


def optimizer(groups: list[dict[str, Any]], cfg: OptimConfig, warmup_steps: Callable[[], int], *,
              on_device: bool) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser of `cfg` over parameter `groups`, and its linear warmup over `warmup_steps()` (read as it runs).

    `on_device` (a CUDA graph's update; `capturable(cfg)` must hold): `Lamb` and `LinearWarmup`, every value on
    the device. Otherwise the libraries': pytorch-optimizer's Lamb (`LibraryLamb`) or torch's AdamW, with LambdaLR.
    Either LAMB has `trust_ratios` (each tensor's at the last step); AdamW has none.
    """
    if on_device:
        lamb = Lamb(groups, lr=cfg.learning_rate)
        return lamb, LinearWarmup(lamb, warmup_steps)
    if cfg.optimizer == "lamb":
        opt = LibraryLamb(groups, lr=cfg.learning_rate, weight_decouple=cfg.decoupled_weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=cfg.learning_rate)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_factor(step, warmup_steps()))


def switch_values(optimizer: torch.optim.Optimizer, scheduler: Any, cfg: OptimConfig, *,
                  restart_warmup: bool = False) -> None:
    """`cfg`'s learning rate, weight decay and LAMB rule on a running optimiser (either kind); moments and the
    warmup's position are kept (`restart_warmup`: back to its first step), the rate is the new one at that position.
    Group 1 (biases, norms) keeps no decay."""
    if restart_warmup and isinstance(scheduler, LinearWarmup):
        scheduler._t.zero_()
    elif restart_warmup:
        scheduler.last_epoch, scheduler._step_count = 0, 1
    scheduler.base_lrs = [cfg.learning_rate] * len(optimizer.param_groups)
    optimizer.param_groups[0]["weight_decay"] = cfg.weight_decay
    lr = cfg.learning_rate * warmup_factor(scheduler.last_epoch, cfg.warmup_steps)
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):  # `Lamb` here: in place, where a captured update reads it
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
        if "weight_decouple" in group:  # pytorch-optimizer's Lamb
            group["weight_decouple"] = cfg.decoupled_weight_decay
