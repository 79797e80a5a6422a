"""ODT's objective (paper Eq. 6-8): max-likelihood with a sequence-level entropy constraint.

policy loss       J(theta) - lambda * H          (lambda held fixed)
temperature loss  lambda * (H - beta)            (H held fixed; dual descent on log lambda)

Beside them, `health`: what a collapse shows first, from the same tensors, logged with every update.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ACTION_EPS = 1e-6  # dataset actions at exactly +-1 would have atanh = inf


class TanhNormal:
    """a = tanh(u), u ~ N(mean, exp(log_std)^2), with the change-of-variables log-density."""

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean = mean
        self.log_std = log_std
        self.std = log_std.exp()

    @staticmethod
    def _log_abs_det_jacobian(u: torch.Tensor) -> torch.Tensor:
        # log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)), stable for large |u|
        return 2.0 * (math.log(2.0) - u - F.softplus(-2.0 * u))

    def _log_prob_pre_tanh(self, u: torch.Tensor) -> torch.Tensor:
        z = (u - self.mean) / self.std
        normal = -0.5 * z.pow(2) - self.log_std - 0.5 * math.log(2 * math.pi)
        return (normal - self._log_abs_det_jacobian(u)).sum(-1)

    def log_prob(self, actions: torch.Tensor) -> torch.Tensor:
        """log pi(a), summed over action dims; actions are clipped away from +-1 first."""
        a = actions.clamp(-1.0 + ACTION_EPS, 1.0 - ACTION_EPS)
        return self._log_prob_pre_tanh(torch.atanh(a))

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A reparameterised sample and its log-probability (no atanh round trip)."""
        u = self.mean + self.std * torch.randn_like(self.mean)
        return torch.tanh(u), self._log_prob_pre_tanh(u)

    def sample(self) -> torch.Tensor:
        """An action for exploration: no log-probability, no graph."""
        return torch.tanh(torch.addcmul(self.mean, self.std, torch.randn_like(self.mean)))

    @property
    def mode(self) -> torch.Tensor:
        """The action used for evaluation: tanh of the Gaussian mean."""
        return torch.tanh(self.mean)


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def policy_loss(
    dist: TanhNormal, actions: torch.Tensor, mask: torch.Tensor | None, temperature: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eq. 8: NLL of the data's actions minus lambda times the policy's entropy.

    The entropy is the one-sample Monte Carlo estimate -log pi(a~), a~ reparameterised,
    averaged over the K steps of each segment and over the batch (a sequence-level
    quantity, not a per-step constraint as in SAC). Returns (loss, nll, entropy).
    """
    nll = -masked_mean(dist.log_prob(actions), mask)
    _, sample_log_prob = dist.rsample()
    entropy = -masked_mean(sample_log_prob, mask)
    loss = nll - temperature.detach() * entropy
    return loss, nll, entropy


def temperature_loss(log_temperature: torch.Tensor, entropy: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Eq. 7: min over lambda >= 0 of lambda (H - beta).

    Entropy below target (H < beta) gives a negative slope, so descent raises lambda;
    above target it lowers lambda. lambda = exp(log_temperature) stays positive.
    """
    return log_temperature.exp() * (entropy.detach() - target_entropy)


def deterministic_loss(pred_actions: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The DT ablation: mean squared error on actions."""
    return masked_mean((pred_actions - actions).pow(2).mean(-1), mask)


@torch.no_grad()
def health(mean: torch.Tensor, log_std: torch.Tensor | None, actions: torch.Tensor, mask: torch.Tensor | None,
           trust_ratios: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """What a collapse shows first, as device tensors: the policy's spread and mean, the data at the clamp,
    LAMB's trust ratios (min/median/max over tensors; None: an optimiser without them)."""
    m = torch.ones(mean.shape[:2], device=mean.device) if mask is None else mask
    weight = (m / m.sum()).unsqueeze(-1)  # over real tokens only
    out = {"mean_abs": (mean.abs() * weight).sum() / mean.shape[-1],
           "actions_at_clamp": ((actions.abs() >= 1.0 - 1e-3).float() * weight).sum() / actions.shape[-1]}
    if log_std is not None:
        per_dim = (log_std * weight).sum((0, 1))  # (act_dim,): mean log-std of each action dim
        out |= {"log_std_mean": per_dim.mean(), "log_std_min": per_dim.min()}
    if trust_ratios is not None:
        out |= {"trust_ratio_min": trust_ratios.min(), "trust_ratio_median": trust_ratios.median(),
                "trust_ratio_max": trust_ratios.max()}
    return out
