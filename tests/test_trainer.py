import pickle
import re

import numpy as np
import pytest
import torch
from synthetic import policy_dataset

from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import ConfigError, FinetuneConfig, ModelConfig, OptimConfig, PretrainConfig, validate
from odt.divergence import Diverged
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from odt.update_graph import to_device

TINY = dict(embed_dim=32, n_layer=1, n_head=2, dropout=0.0, context_len=5, max_ep_len=1000)


def tiny_trainer(trajs=None, *, stochastic=True, reward_scale=0.1, seed=0, **optim):
    trajs = trajs or policy_dataset()
    obs_dim, act_dim = trajs[0].observations.shape[1], trajs[0].actions.shape[1]
    mcfg = ModelConfig(state_dim=obs_dim, act_dim=act_dim, stochastic=stochastic, reward_scale=reward_scale, **TINY)
    cfg = OptimConfig(**{"batch_size": 32, "learning_rate": 3e-3, "weight_decay": 1e-4, "warmup_steps": 20, **optim})
    return ODTTrainer(mcfg, cfg, TrajectoryReplayBuffer(1000, trajs), seed=seed, device="cpu")


def action_mse(trainer: ODTTrainer) -> float:
    """Squared error of the policy's mode against the data's actions, over fresh batches."""
    rng = np.random.default_rng(123)
    trainer.model.eval()
    errs = []
    with torch.no_grad():
        for _ in range(5):
            b = to_device(trainer.buffer.sample(64, trainer.model_cfg.context_len, rng), trainer.device)
            states = (b["states"] - torch.from_numpy(trainer.state_mean)) / torch.from_numpy(trainer.state_std)
            rtg = b["returns_to_go"] * trainer.model_cfg.reward_scale
            mean, log_std = trainer.model(states, b["actions"], rtg, b["timesteps"], b["mask"])
            pred = torch.tanh(mean) if log_std is not None else mean
            m = b["mask"] if b["mask"] is not None else torch.ones(pred.shape[:2])
            errs.append((((pred - b["actions"]) ** 2).mean(-1) * m).sum().item() / m.sum().item())
    return float(np.mean(errs))


@pytest.mark.parametrize("stochastic", [True, False])
def test_pretraining_drives_the_action_error_down_five_fold(stochastic):
    trainer = tiny_trainer(stochastic=stochastic)
    before = action_mse(trainer)
    logged = [trainer.train_updates(100) for _ in range(3)]
    after = action_mse(trainer)
    assert trainer.num_updates == 300
    assert after < before / 5, (before, after)
    assert logged[-1]["loss"] < logged[0]["loss"]
    assert ({"nll", "entropy", "temperature"} <= logged[-1].keys()) == stochastic


def test_temperature_follows_the_entropy_constraint():
    high = tiny_trainer(target_entropy=10.0, temperature_lr=0.05)  # entropy far below target: lambda must rise
    high.train_updates(20)
    low = tiny_trainer(target_entropy=-50.0, temperature_lr=0.05)  # far above target: lambda must fall
    low.train_updates(20)
    assert high.temperature.item() > 0.1 * 1.5
    assert low.temperature.item() < 0.1 / 1.5


def test_warmup_is_linear():
    trainer = tiny_trainer(warmup_steps=10, learning_rate=1e-3)
    lrs = []
    for _ in range(12):
        trainer.update()
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs[:9], [1e-3 * (k + 2) / 10 for k in range(9)])
    assert lrs[9:] == [1e-3] * 3


def test_gradient_norm_is_clipped():
    trainer = tiny_trainer(grad_clip=0.01)
    trainer.update()
    total = torch.norm(torch.stack([p.grad.norm() for p in trainer.model.parameters() if p.grad is not None]))
    assert total.item() <= 0.01 * 1.0001


def params_of(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_checkpoint_round_trip(tmp_path):
    trainer = tiny_trainer()
    trainer.train_updates(7)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"trainer": trainer.state_dict()})
    state = load_checkpoint(path)["trainer"]  # weights_only=True under the hood
    assert state["num_updates"] == 7
    restored = ODTTrainer.from_state(state, device="cpu")
    for a, b in zip(params_of(trainer), params_of(restored)):
        assert torch.equal(a, b)
    assert restored.temperature.item() == trainer.temperature.item()
    np.testing.assert_array_equal(restored.buffer.observations, trainer.buffer.observations)
    np.testing.assert_array_equal(restored.state_mean, trainer.state_mean)
    assert restored.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()
    # a trainer loaded from the file continues exactly as the original does (RNG streams included)
    trainer.train_updates(3)
    again = ODTTrainer.from_state(load_checkpoint(path)["trainer"], device="cpu")
    again.train_updates(3)
    assert all(torch.equal(a, b) for a, b in zip(params_of(trainer), params_of(again)))


def test_copy_is_independent_and_reseed_changes_only_the_streams():
    trainer = tiny_trainer()
    trainer.train_updates(5)
    twin = trainer.copy()
    twin.train_updates(5)  # moves the twin's weights and optimiser moments, not the original's
    assert trainer.num_updates == 5 and twin.num_updates == 10
    assert not all(torch.equal(a, b) for a, b in zip(params_of(trainer), params_of(twin)))
    a, b = trainer.copy(), trainer.copy()
    for t in (a, b):  # one after the other: dropout and sampling draw from torch's global generator
        t.reseed(1)
        t.train_updates(3)
    assert all(torch.equal(x, y) for x, y in zip(params_of(a), params_of(b)))  # same seed, same numbers
    c = trainer.copy()
    c.reseed(2)
    c.train_updates(3)
    assert not all(torch.equal(x, y) for x, y in zip(params_of(a), params_of(c)))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def exploding_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", exploding_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(path)


def test_the_next_phase_optimiser_values_apply_on_load(tmp_path):
    trainer = tiny_trainer(warmup_steps=1, temperature_lr=1e-4)
    trainer.train_updates(3)
    save_checkpoint(tmp_path / "c.pt", {"trainer": trainer.state_dict()})
    cfg = FinetuneConfig(learning_rate=5e-4, weight_decay=0.0, temperature_lr=3e-3, warmup_steps=1)
    restored = ODTTrainer.from_state(load_checkpoint(tmp_path / "c.pt")["trainer"], optim=cfg, device="cpu")
    assert [g["lr"] for g in restored.optimizer.param_groups] == [5e-4, 5e-4]
    assert restored.optimizer.param_groups[0]["weight_decay"] == 0.0
    assert restored.temperature_optimizer.param_groups[0]["lr"] == 3e-3
    assert restored.optimizer.state_dict()["state"][0]["exp_avg"].abs().sum() > 0  # moments kept
    restored.update()
    assert restored.scheduler.get_last_lr() == [5e-4, 5e-4]


def test_warmup_position_carries_over_to_the_next_phase(tmp_path):
    trainer = tiny_trainer(warmup_steps=10, learning_rate=1e-3)
    trainer.train_updates(4)
    trainer.switch_phase(FinetuneConfig(learning_rate=2e-3, warmup_steps=10))
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * 5 / 10)


@pytest.mark.parametrize(
    "cls, bad, field",
    [
        (OptimConfig, {"learning_rate": -1.0}, "learning_rate"),
        (PretrainConfig, {"batch_size": 0}, "batch_size"),
        (FinetuneConfig, {"lr": 1e-3}, "lr"),
        (
            PretrainConfig,
            {"log_every": 10, "checkpoint_every": 15},
            "checkpoint_every (15) must be a multiple of log_every (10)",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_field(cls, bad, field):
    with pytest.raises(ConfigError) as err:
        validate(cls, bad, "train config")
    msg = str(err.value)
    assert field in msg and "\n" not in msg and "ArgsKwargs" not in msg and "(root)" not in msg


def test_a_model_level_check_names_its_fields():
    with pytest.raises(ConfigError) as err:
        validate(ModelConfig, {"state_dim": 3, "act_dim": 2, "embed_dim": 30, "n_head": 4}, "model")
    assert str(err.value) == "invalid model: embed_dim (30) must be divisible by n_head (4)"


def test_health_diagnostics_have_the_right_shape_and_range():
    trainer = tiny_trainer()
    metrics = trainer.train_updates(5)
    lo, hi = trainer.model_cfg.log_std_min, trainer.model_cfg.log_std_max
    assert lo <= metrics["log_std_min"] <= metrics["log_std_mean"] <= hi
    assert 0.0 <= metrics["actions_at_clamp"] <= 1.0 and metrics["mean_abs"] > 0
    assert 0 < metrics["trust_ratio_min"] <= metrics["trust_ratio_median"] <= metrics["trust_ratio_max"]
    assert metrics["grad_norm"] > 0  # the norm before clipping
    # the clamp fraction counts dataset actions at +-1 (over real tokens): all of them here
    saturated = [t for t in policy_dataset()]
    for t in saturated:
        t.actions[:] = np.sign(t.actions) + (t.actions == 0)
    assert tiny_trainer(saturated).train_updates(2)["actions_at_clamp"] == pytest.approx(1.0)
    deterministic = tiny_trainer(stochastic=False).train_updates(2)
    assert "log_std_mean" not in deterministic and "mean_abs" in deterministic
    adamw = tiny_trainer(optimizer="adamw").train_updates(2)
    assert "trust_ratio_min" not in adamw  # AdamW has no trust ratio


def test_a_non_finite_gradient_is_never_applied_and_the_error_names_its_update():
    trainer = tiny_trainer(learning_rate=1e3)  # LAMB at 1e3: the gradient norm overflows within a few updates
    with pytest.raises(Diverged) as err:
        trainer.train_updates(20)
    step = err.value.step
    assert 1 < step <= 20 and trainer.num_updates == step - 1
    assert re.fullmatch(rf"seed 0 diverged at update {step}: the (loss is nan \(grad norm \S+\)|gradient norm is "
                        r"(inf|nan) \(loss \S+\)); lower the learning rate \(1000\.0\)", str(err.value)), str(err.value)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    twin = tiny_trainer(learning_rate=1e3)
    twin.train_updates(step - 1)  # the weights are those after the last good update: the bad one was not applied
    assert all(torch.equal(a, b) for a, b in zip(params_of(trainer), params_of(twin)))
    assert pickle.loads(pickle.dumps(err.value)).args == err.value.args  # crosses a worker process boundary whole


@pytest.mark.parametrize("each_update", [True, False], ids=["cpu", "cuda-block"])
def test_nan_weights_stop_training_at_the_first_update_after_them(each_update):
    trainer = tiny_trainer()
    trainer.train_updates(3)
    trainer.check_each_update = each_update  # False: the CUDA path's check, once after the block, run on the CPU
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.view(-1)[0] = float("nan")
    poisoned = params_of(trainer)
    with pytest.raises(Diverged) as err:
        trainer.train_updates(5)
    assert (
        str(err.value)
        == "seed 0 diverged at update 4: the loss is nan (grad norm nan); lower the learning rate (0.003)"
    )
    assert (err.value.step, err.value.quantity) == (4, "loss")
    if each_update:  # stopped before the optimiser step: the weights are as they were
        assert trainer.num_updates == 3
        for a, b in zip(params_of(trainer), poisoned):
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    else:  # the block ran to its end (no host sync per update), so the loops save nothing after this error
        assert trainer.num_updates == 8
