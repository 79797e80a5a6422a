"""Behaviour policies: the checkpointed SAC trainer (killed and resumed), the float16 export, the checked loader."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from odt.datasets import behaviour
from odt.datasets.behaviour import FP16_ACTION_TOL, export, load_actor, read_progress, train
from odt.datasets.download import sha256_file
from odt.datasets.generate import GenerateError, make_sac
from odt.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
# hopper (the env the issue ships first), a few hundred steps: snapshots at 300/600/900, checkpoints every ~100 steps
RUN = {"seed": 1, "max_steps": 900, "snapshot_every": 300, "checkpoint_every": 100, "eval_episodes": 2}


def _cli(out: Path, **overrides) -> list[str]:
    args = {**RUN, **overrides}
    return [
        sys.executable,
        "-m",
        "odt.datasets.behaviour",
        "train",
        "--env",
        "hopper",
        "--out",
        str(out),
        "--no-progress",
        *[x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))],
    ]


def _chunks(out: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((out / "buffer").glob("*.pt"))}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("behaviour") / "hopper"
    train("hopper", out, **RUN)
    return out


def _killed_after_first_checkpoint(out: Path, sig: int, **overrides) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(_cli(out, **overrides), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    trainer = psutil.Process(proc.pid)
    trainer.suspend()  # held between two steps: the run cannot end before the signal lands, however loaded the machine
    assert not read_progress(out)["done"]
    proc.send_signal(sig)
    with contextlib.suppress(psutil.NoSuchProcess):  # SIGKILL: gone already
        trainer.resume()
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_sigkilled_run_resumes_from_its_checkpoint_and_ends_like_a_straight_run(straight, tmp_path):
    out = tmp_path / "hopper"
    killed = _killed_after_first_checkpoint(out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    before = read_progress(out)
    assert not before["done"] and 0 < before["steps"] < RUN["max_steps"]
    chunks_before = _chunks(out)
    assert list(chunks_before) == [f"{0:09d}-{before['steps']:09d}.pt"]
    saved = torch.load(out / "buffer" / next(iter(chunks_before)), weights_only=True)
    assert saved["dones"][-1] == 1  # checkpoints are taken at episode ends: the resumed run's fresh episode follows
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    model = make_sac(get_task("hopper-medium-v2"), seed=RUN["seed"], train_steps=RUN["max_steps"])
    behaviour._restore(model, copy, torch.load(copy / "checkpoint.pt", weights_only=True))
    assert model.num_timesteps == model.replay_buffer.pos == before["steps"]
    np.testing.assert_array_equal(model.replay_buffer.observations[: before["steps"], 0], saved["observations"].numpy())
    np.testing.assert_array_equal(model.replay_buffer.actions[: before["steps"], 0], saved["actions"].numpy())

    prog = train("hopper", out, **RUN)  # the same arguments: resumes
    assert prog["resumed"] == 1 and prog["done"] and prog["steps"] == RUN["max_steps"]
    ref = read_progress(straight)
    assert [s["step"] for s in prog["snapshots"]] == [s["step"] for s in ref["snapshots"]] == [300, 600, 900]
    # counters continued: as many gradient updates as the uninterrupted run (one per step after 100 random ones)
    assert [s["updates"] for s in prog["snapshots"]] == [s["updates"] for s in ref["snapshots"]] == [200, 500, 800]
    assert [s["transitions"] for s in prog["snapshots"]] == [300, 300, 300]
    # the replay buffer continued: the killed run's chunk is kept as it was and the rest follows it
    after = _chunks(out)
    assert after[next(iter(chunks_before))] == chunks_before[next(iter(chunks_before))]
    bounds = prog["chunks"]
    assert bounds[0] == [0, before["steps"]] and bounds[-1][1] == RUN["max_steps"]
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert len(behaviour.replay_observations(out)) == RUN["max_steps"]
    assert all(Path(out / s["file"]).is_file() for s in prog["snapshots"])

    # a finished run returns at once, writing nothing
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    start = time.perf_counter()
    assert train("hopper", out, **RUN) == prog
    assert time.perf_counter() - start < 5 and (out / "checkpoint.pt").stat().st_mtime_ns == stamp
    with pytest.raises(GenerateError, match=r"holds a run with seed=1, not 2; give the same arguments"):
        train("hopper", out, **{**RUN, "seed": 2})


def test_ctrl_c_is_one_line_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "hopper"
    interrupted = _killed_after_first_checkpoint(out, signal.SIGINT, max_steps=100_000)
    assert interrupted.returncode == 130
    steps = read_progress(out)["steps"]
    assert interrupted.stderr.strip().splitlines() == [
        f"interrupted; the checkpoint at step {steps} is kept: rerun the same command to resume"]


def test_training_stops_at_the_target(tmp_path):
    prog = train("hopper", tmp_path / "h", **{**RUN, "max_steps": 600, "target_return": -1e9})
    assert prog["done"] and prog["reached_target"] and prog["steps"] == 300
    assert [s["step"] for s in prog["snapshots"]] == [300] and prog["chunks"][-1][1] == 300


def test_export_writes_float16_actors_that_match_the_float32_ones_and_their_manifest(straight, tmp_path):
    package = tmp_path / "policies" / "hopper"
    manifest = export(straight, package, check_episodes=2)
    assert json.loads((package / "manifest.json").read_text()) == manifest
    assert (
        manifest["gym_id"] == "Hopper-v5"
        and manifest["seed"] == RUN["seed"]
        and manifest["medium"] == "actor-0000900.pt"
    )
    assert [s["step"] for s in manifest["snapshots"]] == [300, 600, 900]
    assert sum(s["transitions"] for s in manifest["snapshots"]) == manifest["steps"] == RUN["max_steps"]
    assert sorted(p.name for p in package.iterdir()) == ["actor-0000300.pt", "actor-0000600.pt", "actor-0000900.pt",
                                                         "manifest.json"]
    for entry in manifest["snapshots"]:
        assert sha256_file(package / entry["file"]) == entry["sha256"] and entry["bytes"] < 200_000
        assert all(v.dtype == torch.float16 for v in torch.load(package / entry["file"], weights_only=True).values())
    check = manifest["fp16_check"]
    assert check["max_action_error"] <= FP16_ACTION_TOL
    assert check["episodes"] == 2 and len(check["medium_return_float16"]) == len(check["medium_return_float32"]) == 2
    assert (
        check["same"] == behaviour.same_returns(check["medium_return_float32"], check["medium_return_float16"])["same"]
    )

    # the float32 snapshot in SB3's actor vs the loaded float16 module, batched over the run's observations
    model = make_sac(get_task("hopper-medium-v2"), seed=0, train_steps=10)
    obs = behaviour.replay_observations(straight, 500)
    for entry in manifest["snapshots"]:
        model.actor.load_state_dict(torch.load(straight / "snapshots" / entry["file"], weights_only=True))
        expected, _ = model.predict(obs, deterministic=True)
        actor = load_actor(package, entry["step"])
        got = actor.act(obs, deterministic=True).numpy()
        assert got.shape == (500, 3)
        assert np.abs(got - expected).max() <= FP16_ACTION_TOL
        exact = behaviour._actor_from(torch.load(straight / "snapshots" / entry["file"], weights_only=True), -1, 1)
        np.testing.assert_allclose(exact.act(obs, deterministic=True).numpy(), expected, atol=1e-6)
        with torch.no_grad():
            mean, log_std, _ = model.actor.get_action_dist_params(torch.as_tensor(obs))
            np.testing.assert_allclose(exact(torch.as_tensor(obs))[1].numpy(), log_std.numpy(), atol=1e-5)
            np.testing.assert_allclose(exact.distribution(torch.as_tensor(obs)).mode.numpy(), torch.tanh(mean).numpy(),
                                       atol=1e-6)
    sampled = load_actor(package).act(obs, generator=torch.Generator().manual_seed(0))
    assert sampled.shape == (500, 3) and sampled.abs().max() <= 1.0

    thinned = export(straight, tmp_path / "thin", every=600, check_episodes=2)
    assert [(s["step"], s["transitions"]) for s in thinned["snapshots"]] == [(600, 600), (900, 300)]


def test_same_returns_tells_one_policy_from_a_better_one():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1000, 300, 50), rng.normal(1000, 300, 50)
    assert behaviour.same_returns(a, b)["same"] and behaviour.same_returns(a, a)["same"]
    assert not behaviour.same_returns(a, b + 400)["same"]  # ~6 standard errors
    check = behaviour.same_returns([1.0, 1.0], [2.0, 2.0])  # no spread: only equal means are the same
    assert not check["same"] and check["standard_error"] == 0.0


def test_export_needs_two_episodes_to_compare_returns(straight, tmp_path):
    with pytest.raises(GenerateError, match="check_episodes"):
        export(straight, tmp_path / "one", check_episodes=1)
    assert not (tmp_path / "one").exists()


def test_a_corrupted_snapshot_is_refused_in_one_line_naming_it(straight, tmp_path):
    package = tmp_path / "hopper"
    manifest = export(straight, package, check_episodes=2)
    load_actor(package)
    path = package / manifest["snapshots"][0]["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    assert load_actor(package, "medium") is not None  # the others are still fine
    with pytest.raises(GenerateError) as err:
        load_actor(package, 300)
    assert str(err.value) == f"{path} does not match its manifest; restore it with `git checkout {path}`"
    path.unlink()
    with pytest.raises(GenerateError, match=r"is missing; restore it with `git checkout"):
        load_actor(package, 300)
    with pytest.raises(GenerateError, match=r"has no snapshot 1234; it has steps 300, 600, 900"):
        load_actor(package, 1234)
    shutil.rmtree(package)
    with pytest.raises(GenerateError, match=r"manifest.json does not exist"):
        load_actor(package)
