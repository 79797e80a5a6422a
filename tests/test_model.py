import pytest
import torch

from odt.config import ConfigError, ModelConfig, validate
from odt.model import DecisionTransformer


def make_model(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{"state_dim": 5, "act_dim": 3, "context_len": 8, "embed_dim": 32, "n_layer": 2,
                         "n_head": 4, "dropout": 0.0, "max_ep_len": 100, **kw})
    return DecisionTransformer(cfg).eval()


def inputs(B=2, K=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, K, 5, generator=g), torch.rand(B, K, 3, generator=g) * 2 - 1,
            torch.randn(B, K, generator=g), torch.arange(K).repeat(B, 1) + 10)


@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("j", [0, 3, 7])
def test_changing_a_later_token_changes_no_earlier_output(stochastic, j):
    model = make_model(stochastic=stochastic)
    s, a, g, t = inputs()
    base_mean, _ = model(s, a, g, t)
    # the action at step j and everything after it: outputs at steps <= j must not move
    s2, a2, g2 = s.clone(), a.clone(), g.clone()
    a2[:, j:] += 0.5
    s2[:, j + 1:] += 1.0
    g2[:, j + 1:] -= 3.0
    mean, _ = model(s2, a2, g2, t)
    torch.testing.assert_close(mean[:, : j + 1], base_mean[:, : j + 1], rtol=0, atol=1e-6)
    if j < 7:  # and the test can fail: later outputs do move
        assert (mean[:, j + 1:] - base_mean[:, j + 1:]).abs().max() > 1e-4
    # the state at step j itself is seen by the output at step j
    s3 = s.clone()
    s3[:, j] += 1.0
    assert (model(s3, a, g, t)[0][:, j] - base_mean[:, j]).abs().max() > 1e-4


def test_left_padding_with_mask_matches_the_unpadded_sequence():
    model = make_model()
    s, a, g, t = inputs(B=1, K=5)
    mean_short, log_std_short = model(s, a, g, t)
    K = 8  # pad three steps of garbage on the left, masked out
    pad = 3
    def garbage(x):
        return torch.cat([torch.randn(1, pad, *x.shape[2:]) * 7, x], dim=1)

    t_pad = torch.cat([torch.zeros(1, pad, dtype=torch.long), t], dim=1)
    mask = torch.tensor([[0.0] * pad + [1.0] * 5])
    mean_pad, log_std_pad = model(garbage(s), garbage(a), garbage(g), t_pad, mask)
    assert mean_pad.shape == (1, K, 3)
    torch.testing.assert_close(mean_pad[:, pad:], mean_short, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(log_std_pad[:, pad:], log_std_short, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(mean_pad).all()


def test_batched_inference_equals_one_sequence_at_a_time():
    model = make_model()
    s, a, g, t = inputs(B=4)
    batched, _ = model(s, a, g, t, last_only=True)
    single = torch.cat([model(s[i:i + 1], a[i:i + 1], g[i:i + 1], t[i:i + 1], last_only=True)[0] for i in range(4)])
    assert batched.shape == (4, 1, 3)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("stochastic", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_last_only_equals_the_full_forward_read_at_the_newest_state(stochastic, padded):
    """Inference drops the unseen newest action token and computes one query in the last block."""
    model = make_model(stochastic=stochastic, n_layer=3)
    s, a, g, t = inputs(B=3)
    a[:, -1] = 7.0  # the newest action is not known at inference; it must not matter
    mask = None
    if padded:
        mask = torch.ones(3, s.shape[1])
        mask[0, :5] = 0.0
        mask[2, :1] = 0.0
    full_mean, full_std = model(s, a, g, t, mask)
    last_mean, last_std = model(s, a, g, t, mask, last_only=True)
    assert last_mean.shape == (3, 1, 3)
    torch.testing.assert_close(last_mean, full_mean[:, -1:], atol=1e-5, rtol=1e-5)
    if stochastic:
        torch.testing.assert_close(last_std, full_std[:, -1:], atol=1e-5, rtol=1e-5)
    else:
        assert last_std is None and full_std is None


def test_heads_shapes_and_bounds():
    s, a, g, t = inputs()
    mean, log_std = make_model()(s, a, g, t)
    assert mean.shape == log_std.shape == (2, 8, 3)
    assert (log_std >= -5.0).all() and (log_std <= 2.0).all()
    action, none = make_model(stochastic=False)(s, a, g, t)
    assert none is None and action.abs().max() < 1.0


def test_timestep_embedding_can_be_turned_off():
    s, a, g, t = inputs()
    with_pos = make_model()
    without = make_model(use_positional_embedding=False)
    # without positional embedding the timesteps are ignored entirely
    torch.testing.assert_close(without(s, a, g, t)[0], without(s, a, g, t + 50)[0])
    assert (with_pos(s, a, g, t)[0] - with_pos(s, a, g, t + 50)[0]).abs().max() > 1e-4


@pytest.mark.parametrize("bad, field", [
    ({"context_len": 0}, "context_len"),
    ({"embed_dim": 30, "n_head": 4}, "embed_dim"),
    ({"dropout": 1.5}, "dropout"),
    ({"heads": 4}, "heads"),
])
def test_bad_model_config_is_one_line_naming_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        validate(ModelConfig, {"state_dim": 5, "act_dim": 3, **bad}, "model config")
    msg = str(err.value)
    assert field in msg and "\n" not in msg and msg.startswith("invalid model config")
