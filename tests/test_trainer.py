import gymnasium as gym
import numpy as np
import pytest
import torch

from helpers import policy_dataset
from odt.checkpoint import load_checkpoint, save_checkpoint
from odt.config import ConfigError, TrainConfig, validate
from odt.model import ModelConfig
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer

TINY = dict(embed_dim=32, n_layer=1, n_head=2, dropout=0.0, context_len=5, max_ep_len=1000)


def tiny_trainer(trajs=None, *, stochastic=True, **train):
    trajs = trajs or policy_dataset()
    obs_dim, act_dim = trajs[0].observations.shape[1], trajs[0].actions.shape[1]
    mcfg = ModelConfig(state_dim=obs_dim, act_dim=act_dim, stochastic=stochastic, **TINY)
    tcfg = TrainConfig(**{"batch_size": 32, "learning_rate": 3e-3, "weight_decay": 1e-4, "warmup_steps": 20,
                          "device": "cpu", "reward_scale": 0.1, **train})
    return ODTTrainer(mcfg, tcfg, TrajectoryReplayBuffer(1000, trajs))


def action_mse(trainer: ODTTrainer) -> float:
    """Squared error of the policy's mode against the data's actions, over fresh batches."""
    rng = np.random.default_rng(123)
    trainer.model.eval()
    errs = []
    with torch.no_grad():
        for _ in range(5):
            b = trainer._to_device(trainer.buffer.sample(64, trainer.model_cfg.context_len, rng))
            mean, log_std = trainer.model(b["states"], b["actions"], b["returns_to_go"], b["timesteps"], b["mask"])
            pred = torch.tanh(mean) if log_std is not None else mean
            m = b["mask"] if b["mask"] is not None else torch.ones(pred.shape[:2])
            errs.append((((pred - b["actions"]) ** 2).mean(-1) * m).sum().item() / m.sum().item())
    return float(np.mean(errs))


@pytest.mark.parametrize("stochastic", [True, False])
def test_pretraining_drives_the_action_error_down_five_fold(stochastic):
    trainer = tiny_trainer(stochastic=stochastic)
    before = action_mse(trainer)
    logged = []
    trainer.pretrain(300, log_every=100, callback=logged.append, progress=False)
    after = action_mse(trainer)
    assert trainer.num_updates == 300 and [m["step"] for m in logged] == [100, 200, 300]
    assert after < before / 5, (before, after)
    assert logged[-1]["loss"] < logged[0]["loss"]
    if stochastic:
        assert {"nll", "entropy", "temperature"} <= logged[-1].keys()


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


def hopper_envs(n):
    return gym.vector.SyncVectorEnv([lambda: gym.make("Hopper-v5") for _ in range(n)])


def hopper_dataset():
    # a few short random-policy Hopper episodes: right shapes, real dynamics
    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(0)
    from odt.data import Trajectory
    out = []
    for ep in range(6):
        obs, _ = env.reset(seed=ep)
        o, a, r, d = [], [], [], []
        for _ in range(40):
            act = rng.uniform(-1, 1, 3).astype(np.float32)
            o.append(obs)
            obs, rew, term, trunc, _ = env.step(act)
            a.append(act); r.append(rew); d.append(term)
            if term or trunc:
                break
        out.append(Trajectory(np.array(o), np.array(a), np.array(r), np.array(d)))
    return out


def online_trainer(**kw):
    return tiny_trainer(hopper_dataset(), **{"buffer_size": 4, "updates_per_round": 3, "online_samples": 60,
                                              "eval_every_rounds": 2, "eval_episodes": 2, "g_online": 200.0,
                                              "g_eval": 100.0, "eval_context_len": 3, "reward_scale": 0.01, **kw})


def test_tiny_online_finetune_on_hopper_runs_end_to_end():
    trainer = online_trainer()
    trainer.pretrain(5, progress=False)
    # by content, not id(): the buffer hands out fresh views, whose ids Python may reuse
    offline = {t.observations.tobytes() for t in trainer.buffer.trajectories}
    logs = []
    history = trainer.finetune(hopper_envs(1), hopper_envs(2), callback=logs.append,
                               score=lambda r: r / 10.0, progress=False)
    assert trainer.online_samples >= 60 and trainer.online
    assert len(trainer.buffer) == 4  # capacity respected while online data flowed in
    assert trainer.num_updates == 5 + 3 * trainer.rounds
    assert history and history[-1]["online_samples"] == trainer.online_samples
    assert all(h["eval_normalized"] == pytest.approx(h["eval_return"] / 10.0) for h in history)
    assert all(np.isfinite(m["loss"]) for m in logs)
    # FIFO: each round's rollout pushed out the oldest entry; the newest entries are the rollouts
    final = [t.observations.tobytes() for t in trainer.buffer.trajectories]
    n_online = min(len(final), trainer.rounds * trainer.cfg.rollouts_per_round)
    assert trainer.rounds >= 2
    assert sum(f in offline for f in final) == len(final) - n_online
    assert not offline & set(final[-n_online:])
    # the newest trajectory in the buffer is the last exploration rollout (hindsight RTGs from its rewards)
    newest = trainer.buffer.trajectory(len(trainer.buffer) - 1)
    np.testing.assert_allclose(trainer.buffer.returns_to_go[-len(newest):][0], newest.rewards.sum(), rtol=1e-5)


def params_of(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_checkpoint_round_trip(tmp_path):
    trainer = tiny_trainer()
    trainer.train_updates(7)
    path = tmp_path / "ckpt.pt"
    trainer.save(path)
    state = load_checkpoint(path)  # weights_only=True under the hood
    assert state["counters"]["num_updates"] == 7
    restored = ODTTrainer.from_checkpoint(path)
    for a, b in zip(params_of(trainer), params_of(restored)):
        assert torch.equal(a, b)
    assert restored.temperature.item() == trainer.temperature.item()
    np.testing.assert_array_equal(restored.buffer.observations, trainer.buffer.observations)
    np.testing.assert_array_equal(restored.state_mean, trainer.state_mean)
    assert restored.optimizer.state_dict()["state"].keys() == trainer.optimizer.state_dict()["state"].keys()


def test_resume_is_bit_identical_offline_and_online(tmp_path):
    def run(resume_at: str | None):
        trainer = online_trainer(seed=3)
        envs, eval_envs = hopper_envs(1), hopper_envs(2)
        trainer.pretrain(6, progress=False)
        if resume_at == "pretrain":
            trainer.save(tmp_path / "a.pt")
            trainer = ODTTrainer.from_checkpoint(tmp_path / "a.pt")
        trainer.pretrain(10, progress=False)
        trainer.online_round(envs)
        if resume_at == "online":
            trainer.save(tmp_path / "b.pt")
            trainer = ODTTrainer.from_checkpoint(tmp_path / "b.pt")
        trainer.online_round(envs)
        trainer.online_round(envs)
        ev = trainer.evaluate(eval_envs)
        return params_of(trainer), trainer.temperature.item(), trainer.online_samples, ev.returns

    ref = run(None)
    for where in ("pretrain", "online"):
        got = run(where)
        assert all(torch.equal(a, b) for a, b in zip(ref[0], got[0])), where
        assert got[1:3] == ref[1:3]
        np.testing.assert_array_equal(got[3], ref[3])


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


def test_new_phase_learning_rate_is_applied_on_resume(tmp_path):
    trainer = tiny_trainer(warmup_steps=1)
    trainer.train_updates(3)
    trainer.save(tmp_path / "c.pt")
    cfg = trainer.cfg.model_copy(update={"learning_rate": 5e-4, "weight_decay": 0.0})
    restored = ODTTrainer.from_checkpoint(tmp_path / "c.pt", cfg)
    assert [g["lr"] for g in restored.optimizer.param_groups] == [5e-4, 5e-4]
    assert restored.optimizer.param_groups[0]["weight_decay"] == 0.0
    restored.update()
    assert restored.scheduler.get_last_lr() == [5e-4, 5e-4]


@pytest.mark.parametrize("bad, field", [
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": 1e-3}, "lr"),
    ({"device": "tpu"}, "device"),
])
def test_bad_train_config_is_one_line_naming_the_field(bad, field):
    with pytest.raises(ConfigError) as err:
        validate(TrainConfig, bad, "train config")
    msg = str(err.value)
    assert field in msg and "\n" not in msg
