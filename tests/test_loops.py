"""The library's two loops on real Hopper dynamics: what they log, evaluate and keep, and resume after a kill."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from synthetic import episodes

from odt import FinetuneConfig, MemoryLogger, ModelConfig, ODTTrainer, PretrainConfig, Trajectory, finetune, pretrain
from odt.checkpoint import load_checkpoint
from odt.datasets.hdf5 import load_d4rl_hdf5, write_d4rl_hdf5
from odt.divergence import Diverged
from odt.envs import EnvMismatchError, vector_env
from odt.replay import TrajectoryReplayBuffer

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(state_dim=11, act_dim=3, context_len=5, embed_dim=32, n_layer=1, n_head=2, dropout=0.0,
                    reward_scale=0.01)
PRETRAIN = PretrainConfig(batch_size=32, learning_rate=3e-3, warmup_steps=20, pretrain_updates=40, log_every=10,
                          checkpoint_every=20, eval_every=20, eval_episodes=2, g_eval=100.0, eval_context_len=3)
FINETUNE = FinetuneConfig(batch_size=32, learning_rate=3e-3, warmup_steps=20, buffer_size=4, updates_per_round=3,
                          online_samples=60, eval_every_rounds=2, checkpoint_every_rounds=2, eval_episodes=3,
                          g_online=200.0, g_eval=100.0, eval_context_len=3)


def hopper() -> gym.Env:
    return gym.make("Hopper-v5")


def hopper_dataset(n: int = 6, steps: int = 40) -> list[Trajectory]:
    """A few short random-policy Hopper episodes: right shapes, real dynamics."""
    rng = np.random.default_rng(0)
    return episodes(hopper(), lambda obs: rng.uniform(-1, 1, 3).astype(np.float32), n, max_steps=steps)


def test_pretraining_logs_evaluates_and_checkpoints_on_its_cadence(tmp_path):
    logger, data = MemoryLogger(), hopper_dataset()
    run = pretrain(data, MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", logger=logger,
                   checkpoint=tmp_path / "pre.pt", progress=False)
    assert run.trainer.num_updates == 40
    assert [step for step, _ in logger.rows] == [10, 20, 30, 40]
    assert [e["updates"] for e in run.evaluations] == [20, 40] and run.final == run.evaluations[-1]
    assert [step for step, _ in logger.reports] == [20, 40]
    for (step, row), ev in zip([r for r in logger.rows if "eval_return" in r[1]], run.evaluations):
        assert step == ev["updates"] and row["eval_normalized"] == ev["eval_normalized"]
        # D4RL's normalisation of the same returns, in one place
        assert ev["eval_normalized"] == pytest.approx(100 * (ev["eval_return"] + 20.272305) / (3234.3 + 20.272305))
    assert {"loss", "nll", "entropy", "temperature", "grad_norm", "learning_rate", "wall_time"} <= logger.rows[0][
        1
    ].keys()
    state = load_checkpoint(tmp_path / "pre.pt")
    assert state["trainer"]["num_updates"] == 40 and state["evaluations"] == run.evaluations
    assert "buffer" not in state["trainer"]  # the offline data is an input: not copied into every checkpoint
    # a finished run called again computes nothing and returns the same evaluations
    again = MemoryLogger()
    rerun = pretrain(data, MODEL, PRETRAIN, hopper, device="cpu", logger=again, checkpoint=tmp_path / "pre.pt",
                     progress=False)
    assert rerun.evaluations == run.evaluations and again.rows == [] and rerun.trainer.num_updates == 40
    with pytest.raises(ValueError, match="pass data="):  # the checkpoint alone cannot rebuild the buffer
        ODTTrainer.from_state(load_checkpoint(tmp_path / "pre.pt")["trainer"])


def test_the_loops_read_a_d4rl_file_themselves_and_write_their_curves(tmp_path):
    path = write_d4rl_hdf5(tmp_path / "hopper.hdf5", hopper_dataset())
    by_path = pretrain(path, MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", progress=False,
                       checkpoint=tmp_path / "pre.pt")
    loaded = pretrain(load_d4rl_hdf5(path, task="hopper-medium-v2"), MODEL, PRETRAIN, hopper, task="hopper-medium-v2",
                      device="cpu", progress=False)
    assert by_path.evaluations == loaded.evaluations and len(by_path.trainer.buffer) == len(loaded.trainer.buffer)
    online = finetune(tmp_path / "pre.pt", FINETUNE, hopper, data=path, device="cpu", progress=False)
    assert online.final["online_samples"] >= 60
    for run, header in ((by_path, "updates"), (online, "round,online_samples")):
        lines = run.write_curve(tmp_path / "curve.csv").read_text().splitlines()
        assert lines[0] == header + ",eval_return,eval_return_std,eval_normalized,eval_normalized_std"
        assert len(lines) == 1 + len(run.evaluations)
        assert float(lines[-1].split(",")[-2]) == run.final["eval_normalized"]


def test_finetuning_explores_fills_the_buffer_fifo_and_scores_on_its_cadence():
    pre = pretrain(hopper_dataset(), MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", progress=False)
    before = [p.detach().clone() for p in pre.trainer.model.parameters()]
    offline = {t.observations.tobytes() for t in sorted(pre.trainer.buffer.trajectories,
                                                         key=lambda t: t.episode_return)[-FINETUNE.buffer_size:]}
    logger = MemoryLogger()
    run = finetune(pre.trainer, FINETUNE, hopper, seed=1, offline=PRETRAIN, device="cpu", logger=logger, progress=False)
    trainer = run.trainer
    # the pretrained one untouched
    assert all(torch.equal(a, b) for a, b in zip(before, pre.trainer.model.parameters()))
    assert trainer.seed == 1 and len(trainer.buffer) == FINETUNE.buffer_size
    rounds = run.final["round"]
    assert run.final["online_samples"] >= 60 and trainer.num_updates == 40 + 3 * rounds
    assert [e["round"] for e in run.evaluations] == [0, *range(2, rounds, 2), rounds]
    assert run.evaluations[0]["online_samples"] == 0
    # the offline score: the pretrained policy scored with the pretraining's settings (2 episodes) and this seed
    scorer = pre.trainer.copy()
    scorer.reseed(1)
    assert run.offline_score == scorer.evaluate(vector_env(hopper, PRETRAIN.eval_episodes), PRETRAIN, index=0)
    assert {k: v for k, v in run.evaluations[0].items() if k.startswith("eval_")} == scorer.evaluate(
        vector_env(hopper, FINETUNE.eval_episodes), FINETUNE, index=0)
    assert [s for s, _ in logger.rows] == [40 + 3 * r for r in range(rounds + 1)]  # step = updates, one row a round
    assert logger.rows[0][1]["offline_normalized"] == run.offline_score["eval_normalized"]
    assert [r["round"] for _, r in logger.rows[1:]] == list(range(1, rounds + 1))
    # FIFO: each round's rollout pushed out the oldest entry; the newest entries are the rollouts
    final = [t.observations.tobytes() for t in trainer.buffer.trajectories]
    n_online = min(len(final), rounds)
    assert sum(f in offline for f in final) == len(final) - n_online and not offline & set(final[-n_online:])
    newest = trainer.buffer.trajectory(len(trainer.buffer) - 1)  # hindsight RTGs from its own rewards
    np.testing.assert_allclose(trainer.buffer.returns_to_go[-len(newest):][0], newest.rewards.sum(), rtol=1e-5)


def test_an_environment_with_other_dims_fails_before_any_update():
    with pytest.raises(EnvMismatchError, match="the environment gives observations of 17 dims"):
        pretrain(hopper_dataset(), MODEL, PRETRAIN, lambda: gym.make("Walker2d-v5"), device="cpu", progress=False)


SCRIPT = """
import json, sys, gymnasium as gym, numpy as np, torch
sys.path.insert(0, {tests!r})
from test_loops import FINETUNE, MODEL, PRETRAIN, hopper, hopper_dataset
from odt import MemoryLogger, finetune, pretrain
out = sys.argv[1]
loggers = {{"pretrain": MemoryLogger(), "finetune": MemoryLogger()}}
pre = pretrain(hopper_dataset(), MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu",
               logger=loggers["pretrain"], checkpoint=out + "/pre.pt", progress=False)
run = finetune(pre.trainer, FINETUNE, hopper, seed=3, offline=PRETRAIN, device="cpu", logger=loggers["finetune"],
               checkpoint=out + "/ft.pt", progress=False)
params = torch.cat([p.detach().flatten() for p in run.trainer.model.parameters()]).tolist()
json.dump({{"params": params, "evaluations": run.evaluations, "pretrain": pre.evaluations, "offline": run.offline_score,
           "temperature": run.trainer.temperature.item(),
           "rows": {{phase: [[s, {{k: v for k, v in r.items() if k != "wall_time"}}] for s, r in logger.rows]
                    for phase, logger in loggers.items()}}}},
          open(out + "/out.json", "w"))
"""


def run_script(out: Path, *, kill_when=None) -> dict | None:
    """The script in a fresh process; with `kill_when(out)`, SIGKILL as soon as it holds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests")), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if kill_when is not None:
        deadline = time.monotonic() + 120
        while proc.poll() is None and not kill_when(out) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()
    return json.loads((out / "out.json").read_text())


def mid_finetune(out: Path) -> bool:
    """A finetuning checkpoint exists, and it is not the last one."""
    try:
        state = load_checkpoint(out / "ft.pt")
    except (FileNotFoundError, ValueError):  # not there yet, or being replaced
        return False
    return 0 < state["online_samples"] < FINETUNE.online_samples


@pytest.mark.parametrize("kill_when", [lambda out: (out / "pre.pt").is_file(), mid_finetune],
                         ids=["during pretraining", "during finetuning"])
def test_killed_and_rerun_through_the_library_alone_gives_the_same_numbers(tmp_path, kill_when):
    (tmp_path / "ref").mkdir(), (tmp_path / "killed").mkdir()
    ref = run_script(tmp_path / "ref")
    out = tmp_path / "killed"
    run_script(out, kill_when=kill_when)
    assert not (out / "out.json").exists()  # killed before the end
    resumed = run_script(out)
    assert resumed["params"] == ref["params"] and resumed["temperature"] == ref["temperature"]
    assert (resumed["evaluations"], resumed["pretrain"], resumed["offline"]) == (ref["evaluations"], ref["pretrain"],
                                                                                  ref["offline"])
    # the resumed process logs the steps after its checkpoint again, with the values of the run never killed
    for phase in ("pretrain", "finetune"):
        logged = dict((s, r) for s, r in ref["rows"][phase])
        assert all(logged[s] == r for s, r in resumed["rows"][phase])
    assert resumed["rows"]["finetune"][-1] == ref["rows"]["finetune"][-1]
    assert len(resumed["rows"]["pretrain"] + resumed["rows"]["finetune"]) < len(
        ref["rows"]["pretrain"] + ref["rows"]["finetune"]
    )


def non_finite(state) -> list[str]:
    """Keys of every float tensor in a checkpoint (nested) holding a NaN or an infinity."""
    if torch.is_tensor(state):
        return [""] if state.is_floating_point() and not torch.isfinite(state).all() else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [f"{k}/{sub}".rstrip("/") for k, v in items for sub in non_finite(v)]


@pytest.mark.parametrize("each_update", [True, False], ids=["cpu", "cuda-block"])
def test_a_diverging_pretraining_stops_at_its_update_and_no_checkpoint_holds_a_nan(tmp_path, monkeypatch, each_update):
    block = 1 if each_update else 2  # log (and checkpoint) every `block` updates
    if not each_update:  # the CUDA path's check, once after each block (the weights are NaN by then), run on the CPU
        init = ODTTrainer.__init__

        def block_checked(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.check_each_update = False

        monkeypatch.setattr(ODTTrainer, "__init__", block_checked)
    cfg = PRETRAIN.model_copy(update={"learning_rate": 1e3, "log_every": block, "checkpoint_every": block})
    logger = MemoryLogger()
    with pytest.raises(Diverged) as err:
        pretrain(hopper_dataset(), MODEL, cfg, hopper, task="hopper-medium-v2", seed=3, device="cpu", logger=logger,
                 checkpoint=tmp_path / "pre.pt", progress=False)
    step = err.value.step
    assert re.fullmatch(
        rf"pretrain hopper-medium-v2 seed 3 diverged at update {step}: the (loss|gradient norm) is "
        r"(nan|inf) \((loss|grad norm) \S+\); lower pretrain\.learning_rate \(1000\.0\)",
        str(err.value),
    )
    assert 1 < step < cfg.pretrain_updates
    good = (step - 1) // block * block  # the updates of the blocks before the diverged one
    assert [s for s, _ in logger.rows] == list(range(block, good + 1, block))  # nothing of the diverged block is logged
    state = load_checkpoint(tmp_path / "pre.pt")
    assert state["trainer"]["num_updates"] == good and non_finite(state) == []
    with pytest.raises(Diverged) as again:  # resumed from there, it diverges at the same update and writes nothing
        pretrain(hopper_dataset(), MODEL, cfg, hopper, task="hopper-medium-v2", seed=3, device="cpu",
                 checkpoint=tmp_path / "pre.pt", progress=False)
    assert str(again.value) == str(err.value)
    assert load_checkpoint(tmp_path / "pre.pt")["trainer"]["num_updates"] == good


def test_a_diverging_finetuning_names_the_task_of_its_checkpoint_and_keeps_its_last_good_one(tmp_path):
    data = write_d4rl_hdf5(tmp_path / "hopper.hdf5", hopper_dataset())
    pretrain(data, MODEL, PRETRAIN, hopper, task="hopper-medium-v2", device="cpu", checkpoint=tmp_path / "pre.pt",
             progress=False)
    cfg = FINETUNE.model_copy(update={"learning_rate": 1e3, "checkpoint_every_rounds": 1})
    with pytest.raises(Diverged) as err:
        finetune(tmp_path / "pre.pt", cfg, hopper, data=data, seed=1, device="cpu", checkpoint=tmp_path / "ft.pt",
                 progress=False)
    step = err.value.step
    assert str(err.value).startswith(f"finetune hopper-medium-v2 seed 1 diverged at update {step}: the ")
    assert str(err.value).endswith("; lower finetune.learning_rate (1000.0)")
    state = load_checkpoint(tmp_path / "ft.pt")
    assert PRETRAIN.pretrain_updates <= state["trainer"]["num_updates"] < step and non_finite(state) == []


def test_a_nan_evaluation_is_never_a_score():
    trainer = ODTTrainer(MODEL, PRETRAIN, TrajectoryReplayBuffer(10, hopper_dataset()), seed=2, device="cpu",
                         task="hopper-medium-v2")
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.fill_(float("nan"))
    with pytest.raises(Diverged) as err:
        trainer.evaluate(vector_env(hopper, 2), PRETRAIN, index=0)
    assert str(err.value) == ("hopper-medium-v2 seed 2 diverged at update 0: the evaluation's eval_return is nan; "
                              "lower the learning rate (0.003)")
