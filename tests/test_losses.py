import math

import numpy as np
import torch

from odt.losses import TanhNormal, policy_loss, temperature_loss


def test_tanh_gaussian_log_prob_matches_numerical_change_of_variables():
    torch.manual_seed(0)
    mean = torch.randn(200, 3, dtype=torch.float64)
    log_std = torch.rand(200, 3, dtype=torch.float64) - 1.0
    dist = TanhNormal(mean, log_std)
    a = torch.tanh(mean + log_std.exp() * torch.randn_like(mean))
    # p_a(a) = N(atanh a; mu, sigma) * |d atanh(a)/da|, derivative by central differences
    h = 1e-7
    u = torch.atanh(a)
    du_da = (torch.atanh(a + h) - torch.atanh(a - h)) / (2 * h)
    normal = torch.distributions.Normal(mean, log_std.exp())
    expected = (normal.log_prob(u) + torch.log(du_da)).sum(-1)
    torch.testing.assert_close(dist.log_prob(a), expected, rtol=1e-6, atol=1e-5)


def test_tanh_gaussian_density_integrates_to_one():
    dist = TanhNormal(torch.tensor([[0.7]], dtype=torch.float64), torch.tensor([[-0.3]], dtype=torch.float64))
    a = torch.linspace(-1 + 1e-9, 1 - 1e-9, 400_001, dtype=torch.float64).reshape(-1, 1, 1)
    density = dist.log_prob(a).exp().reshape(-1).numpy()
    assert abs(np.trapezoid(density, a.reshape(-1).numpy()) - 1.0) < 1e-3


def test_dataset_actions_at_the_bounds_give_finite_log_prob():
    dist = TanhNormal(torch.zeros(4, 2), torch.zeros(4, 2))
    lp = dist.log_prob(torch.tensor([[1.0, -1.0]] * 4))
    assert torch.isfinite(lp).all()


def test_rsample_log_prob_agrees_with_log_prob_of_the_sample():
    torch.manual_seed(1)
    dist = TanhNormal(torch.randn(500, 2, dtype=torch.float64) * 0.5, torch.full((500, 2), -0.5, dtype=torch.float64))
    a, lp = dist.rsample()
    torch.testing.assert_close(lp, dist.log_prob(a), rtol=1e-6, atol=1e-6)


def test_one_sample_entropy_estimate_is_unbiased():
    # 1-D tanh-Gaussian entropy by numerical integration vs the mean of many one-sample estimates
    mu, ls = 0.3, -0.7
    dist = TanhNormal(torch.tensor([[mu]], dtype=torch.float64), torch.tensor([[ls]], dtype=torch.float64))
    a = torch.linspace(-1 + 1e-12, 1 - 1e-12, 400_001, dtype=torch.float64).reshape(-1, 1, 1)
    logp = dist.log_prob(a).reshape(-1)
    exact = -np.trapezoid((logp.exp() * logp).numpy(), a.reshape(-1).numpy())
    torch.manual_seed(0)
    many = TanhNormal(
        torch.full((200_000, 1), mu, dtype=torch.float64), torch.full((200_000, 1), ls, dtype=torch.float64)
    )
    _, lp = many.rsample()
    assert abs(-lp.mean().item() - exact) < 0.01


def test_policy_loss_is_nll_minus_lambda_entropy_on_masked_tokens():
    torch.manual_seed(0)
    mean, log_std = torch.randn(4, 6, 2), torch.randn(4, 6, 2) * 0.1
    actions = torch.tanh(torch.randn(4, 6, 2))
    mask = torch.ones(4, 6)
    mask[:, :2] = 0
    dist = TanhNormal(mean, log_std)
    torch.manual_seed(5)
    loss, nll, entropy = policy_loss(dist, actions, mask, torch.tensor(0.3))
    expected_nll = -dist.log_prob(actions)[:, 2:].mean()
    torch.testing.assert_close(nll, expected_nll)
    torch.testing.assert_close(loss, nll - 0.3 * entropy)
    # padded tokens do not count: garbage there changes nothing
    actions2 = actions.clone()
    actions2[:, :2] = 0.999
    torch.manual_seed(5)
    _, nll2, _ = policy_loss(dist, actions2, mask, torch.tensor(0.3))
    torch.testing.assert_close(nll2, nll)


def _temperature_after_one_step(entropy: float, target: float) -> float:
    log_t = torch.tensor(math.log(0.1), requires_grad=True)
    opt = torch.optim.Adam([log_t], lr=1e-2)
    temperature_loss(log_t, torch.tensor(entropy), target).backward()
    opt.step()
    return log_t.exp().item()


def test_temperature_rises_when_entropy_is_below_target_and_falls_above():
    assert _temperature_after_one_step(entropy=-5.0, target=-3.0) > 0.1
    assert _temperature_after_one_step(entropy=-1.0, target=-3.0) < 0.1
