"""Data rolled out from behaviour policies (odt.datasets.rollout): deterministic bytes, every snapshot in its share,
D4RL's layout, the manifest's provenance, a tampered policy file refused, the shipped policies used by default."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from odt.checkpoint import save_checkpoint
from odt.datasets import generate, rollout
from odt.datasets.behaviour import BehaviourActor, export, load_actor, read_manifest, replay_episodes, train
from odt.datasets.download import sha256_file
from odt.datasets.generate import GenerateError, generate_task
from odt.datasets.hdf5 import ends_with_tail, load_d4rl_hdf5, read_metadata
from odt.datasets.rollout import from_policies, quotas
from odt.envs import make_env
from odt.tasks import get_task, normalized_score
from pipeline import dataset_report, fetch

# hopper, SB3's default actor (256x256): snapshots at 100/200/300 steps, seconds to train
RUN = {"seed": 1, "max_steps": 300, "snapshot_every": 100, "checkpoint_every": 300, "eval_episodes": 1}


@pytest.fixture(scope="session")
def package(tmp_path_factory) -> Path:
    """A tiny behaviour-policy package, made as the real ones are: behaviour.train then behaviour.export."""
    work = tmp_path_factory.mktemp("policies")
    train("hopper", work / "run", **RUN)
    export(work / "run", work / "policies" / "hopper", check_episodes=2, check_observations=256)
    return work / "policies" / "hopper"


def _copy(package: Path, to: Path) -> Path:
    shutil.copytree(package, to)
    return to


def _rewrite(package: Path, manifest: dict) -> None:
    for entry in manifest["snapshots"]:
        entry["sha256"] = sha256_file(package / entry["file"])
        entry["bytes"] = (package / entry["file"]).stat().st_size
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


# a constant action per snapshot (tanh of these, exact in float16): each trajectory tells which snapshot made it
BIASES = (0.25, -0.5, 0.75)


@pytest.fixture(scope="session")
def marked(package, tmp_path_factory) -> Path:
    """The package with each snapshot's actor made to act tanh(BIASES[k]) (no noise to speak of), shares 1:3:2."""
    to = _copy(package, tmp_path_factory.mktemp("marked") / "hopper")
    manifest = read_manifest(to)
    for entry, bias, share in zip(manifest["snapshots"], BIASES, (100, 300, 200)):
        state = torch.load(to / entry["file"], weights_only=True)
        state["mu.weight"].zero_()
        state["mu.bias"].fill_(bias)
        state["log_std.weight"].zero_()
        state["log_std.bias"].fill_(-20.0)  # SB3's lower clamp: std 2e-9
        save_checkpoint(to / entry["file"], state)
        entry["transitions"] = share
    _rewrite(to, manifest)
    return to


def _bytes(path: Path) -> bytes:
    return Path(path).read_bytes()


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}


def test_same_seed_same_bytes_whatever_the_thread_count(package, tmp_path):
    for task, n in (("hopper-medium-v2", 2500), ("hopper-medium-replay-v2", None)):
        a, info_a = from_policies(task, tmp_path / "a" / task, seed=5, transitions=n, package_dir=package)
        torch.set_num_threads(2)
        try:
            b, info_b = from_policies(task, tmp_path / "b" / task, seed=5, transitions=n, package_dir=package)
            assert torch.get_num_threads() == 2  # restored after its own single thread
        finally:
            torch.set_num_threads(1)
        assert _bytes(a) == _bytes(b), task
        assert info_a == info_b
    assert [p["n_envs"] for p in info_a["snapshots"]] == [1, 1, 1]  # a 100-transition share needs one env
    assert json.loads((tmp_path / "a" / "hopper-medium-v2" / "rollout.json").read_text())["snapshots"][0]["n_envs"] == 3


def test_another_seed_other_data(package, tmp_path):
    a, _ = from_policies("hopper-medium-v2", tmp_path / "a", seed=0, transitions=2500, package_dir=package)
    b, _ = from_policies("hopper-medium-v2", tmp_path / "b", seed=1, transitions=2500, package_dir=package)
    x, y = _arrays(a), _arrays(b)
    assert x["observations"].shape == y["observations"].shape == (2500, 11)
    assert not np.array_equal(x["observations"][0], y["observations"][0])  # other reset seeds
    assert not np.array_equal(x["actions"][0], y["actions"][0])  # other noise


def test_medium_replay_rolls_out_every_snapshot_in_its_share(marked, tmp_path):
    manifest = read_manifest(marked)
    for n, want in ((None, [100, 300, 200]), (1200, [200, 600, 400]), (1000, [167, 500, 333])):
        path, info = from_policies(
            "hopper-medium-replay-v2", tmp_path / str(n), seed=0, transitions=n, package_dir=marked
        )
        trajs = load_d4rl_hdf5(path, "hopper-medium-replay-v2")
        parts = info["snapshots"]
        assert [p["step"] for p in parts] == [100, 200, 300]
        assert [p["sha256"] for p in parts] == [e["sha256"] for e in manifest["snapshots"]]
        assert [p["buffer_share"] for p in parts] == pytest.approx([1 / 6, 1 / 2, 1 / 3])
        assert [p["transitions"] for p in parts] == want and info["transitions"] == sum(want)
        assert sum(p["n_trajectories"] for p in parts) == len(trajs)
        for part, bias in zip(parts, BIASES):
            mine = trajs[part["first_trajectory"] : part["first_trajectory"] + part["n_trajectories"]]
            assert sum(len(t) for t in mine) == part["transitions"]
            for t in mine:  # made by this snapshot's actor and no other
                np.testing.assert_allclose(t.actions, np.tanh(bias), atol=1e-3)
    path, info = from_policies("hopper-medium-v2", tmp_path / "medium", seed=0, transitions=700, package_dir=marked)
    assert [p["step"] for p in info["snapshots"]] == [300]  # medium: the manifest's medium policy alone
    np.testing.assert_allclose(_arrays(path)["actions"], np.tanh(BIASES[-1]), atol=1e-3)


def test_quotas_scale_the_shares_to_the_total():
    manifest = {"medium": "c", "snapshots": [{"file": f, "transitions": s} for f, s in zip("abcd", (1, 1, 1, 5))]}
    assert [q for _, q in quotas(manifest, "medium-replay", None)] == [1, 1, 1]  # up to the medium snapshot
    assert [q for _, q in quotas(manifest, "medium-replay", 10)] == [4, 3, 3]
    assert [q for _, q in quotas(manifest, "medium-replay", 2)] == [1, 1, 0]
    assert [(e["file"], q) for e, q in quotas(manifest, "medium", None)] == [("c", 1_000_000)]


def _cheetah_package(root: Path) -> Path:
    """HalfCheetah never terminates: every episode ends at the time limit. Random actors, a hand-written manifest."""
    spec = get_task("halfcheetah-medium-v2")
    package = root / "halfcheetah"
    package.mkdir(parents=True)
    torch.manual_seed(0)
    snapshots = []
    for step in (100, 200):
        name = f"actor-{step:07d}.pt"
        actor = BehaviourActor(spec.obs_dim, spec.act_dim)
        save_checkpoint(package / name, {k: v.half() for k, v in actor.state_dict().items()})
        snapshots.append({"file": name, "step": step, "transitions": 100, "eval_return": 0.0})
    manifest = {"format": "odt-behaviour-1", "env": "halfcheetah", "gym_id": "HalfCheetah-v5", "env_version": "v5",
                "seed": 0, "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "action_low": [-1.0] * spec.act_dim,
                "action_high": [1.0] * spec.act_dim, "medium": snapshots[-1]["file"], "snapshots": snapshots}
    _rewrite(package, manifest)
    return package


def test_a_written_file_is_d4rl_layout_with_time_limits_and_a_tail(tmp_path):
    package = _cheetah_package(tmp_path / "policies")
    path, info = from_policies("halfcheetah-medium-v2", tmp_path / "out", seed=0, transitions=2500, package_dir=package)
    assert info["snapshots"][0]["n_envs"] == 3
    trajs = load_d4rl_hdf5(path, "halfcheetah-medium-v2")  # odt's reader of D4RL's files
    assert [len(t) for t in trajs] == [1000, 1000, 500]  # two whole episodes in the order they started, then the cut
    arrays = _arrays(path)
    assert set(arrays) == {"observations", "next_observations", "actions", "rewards", "terminals", "timeouts"}
    assert arrays["observations"].dtype == np.float32 and arrays["observations"].shape == (2500, 17)
    assert np.flatnonzero(arrays["timeouts"]).tolist() == [999, 1999] and not arrays["terminals"].any()
    assert ends_with_tail(path) and read_metadata(path)["tail"]
    np.testing.assert_array_equal(arrays["next_observations"][:999], arrays["observations"][1:1000])
    assert np.abs(arrays["actions"]).max() <= 1.0 and np.isfinite(arrays["rewards"]).all()


class _Counted(gym.Wrapper):
    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def test_episodes_the_data_no_longer_needs_are_stopped(tmp_path):
    actor = load_actor(_cheetah_package(tmp_path / "policies"))
    for quota, lengths, steps in ((2500, [1000, 1000, 500], [1000, 1000, 834]), (1500, [1000, 500], [1000, 750, 500])):
        envs = [_Counted(make_env("halfcheetah-medium-v2")) for _ in range(3)]
        trajs, cut = rollout.rollout(actor, envs, quota, seed=0, key=(0, 1))
        assert [len(t) for t in trajs] == lengths and cut
        # three episodes start together; each stops once it holds all the data can take of it
        assert [e.steps for e in envs] == steps


def test_fetch_writes_the_rollout_with_the_manifest_provenance_the_same_bytes_twice(package, tmp_path):
    manifest = read_manifest(package)
    metas = []
    for run in ("a", "b"):
        out = tmp_path / run / "hopper-medium-v2"
        argv = ["--task", "hopper-medium-v2", "--source", "generate", "--policies", str(package), "--seed", "2",
                "--transitions", "1500", "--cache", str(tmp_path / run / "cache"), "--no-progress", "--out", str(out)]
        assert fetch.main(argv) == 0
        metas.append(json.loads((out / "hopper-medium-v2.json").read_text()))
        trajs = load_d4rl_hdf5(out / "hopper-medium-v2.hdf5", "hopper-medium-v2")
        assert sum(len(t) for t in trajs) == 1500
        assert all(t.terminals[-1] for t in trajs[:-1])  # the tiny policy falls: episodes end in a terminal
        assert all(not t.terminals[:-1].any() for t in trajs)
    a, b = metas
    assert (
        a["sha256"]
        == b["sha256"]
        == hashlib.sha256(_bytes(tmp_path / "a" / "hopper-medium-v2" / "hopper-medium-v2.hdf5")).hexdigest()
    )
    origin = a["origin"]
    assert "behaviour policies" in a["note"] and "not D4RL data" in a["note"]
    assert (origin["env"], origin["gym_id"], origin["env_version"]) == ("hopper", "Hopper-v5", "v5")
    assert origin["run_seed"] == RUN["seed"] and origin["run_steps"] == RUN["max_steps"] and origin["seed"] == 2
    assert origin["manifest_sha256"] == sha256_file(package / "manifest.json")
    medium = manifest["snapshots"][-1]
    assert [(s["file"], s["step"], s["sha256"], s["buffer_share"], s["transitions"]) for s in origin["snapshots"]] == [
        (medium["file"], 300, medium["sha256"], pytest.approx(1 / 3), 1500)]
    assert origin["snapshots"][0]["n_trajectories"] == a["n_trajectories"]
    assert Path(origin["run_dir"]).parent == tmp_path / "a" / "cache" / "generate" / "policies"


def test_a_policy_file_that_does_not_match_its_manifest_stops_fetch_in_one_line(package, tmp_path, capsys):
    pkg = _copy(package, tmp_path / "hopper")
    argv = ["--task", "hopper-medium-replay-v2", "--source", "generate", "--policies", str(pkg), "--transitions", "300",
            "--cache", str(tmp_path / "cache"), "--no-progress", "--out", str(tmp_path / "out")]
    assert fetch.main(argv) == 0  # cached now
    first = pkg / read_manifest(pkg)["snapshots"][0]["file"]
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.write_bytes(bytes(data))
    before = _bytes(tmp_path / "out" / "hopper-medium-replay-v2.hdf5")
    capsys.readouterr()
    assert fetch.main(argv) == 2  # refused though the data is cached
    assert capsys.readouterr().err.splitlines() == [
        f"error: {first} does not match its manifest; restore it with `git checkout {first}`"]
    assert _bytes(tmp_path / "out" / "hopper-medium-replay-v2.hdf5") == before  # the old output stays
    medium = ["--task", "hopper-medium-v2", *argv[2:-1], str(tmp_path / "medium")]
    assert fetch.main(medium) == 0  # medium rolls out the last snapshot alone, which is intact


def test_shipped_policies_are_the_default_and_train_steps_trains(package, tmp_path, monkeypatch):
    trained = []

    def no_training(spec, *args, **kwargs):
        trained.append(spec.name)
        raise GenerateError("SAC training asked for")

    monkeypatch.setattr(generate, "generate_run", no_training)
    monkeypatch.setattr(rollout, "POLICIES", tmp_path / "empty")
    with pytest.raises(GenerateError, match="SAC training asked for"):  # nothing shipped: the old path
        generate_task("hopper-medium-v2", transitions=200, cache_dir=tmp_path / "c0")
    monkeypatch.setattr(rollout, "POLICIES", package.parent)
    path, info = generate_task("hopper-medium-v2", transitions=200, cache_dir=tmp_path / "c1")
    assert info["policies"] == str(package) and info["generator"].startswith("behaviour policies")
    assert sum(len(t) for t in load_d4rl_hdf5(path, "hopper-medium-v2")) == 200
    for training in ({"train_steps": 300}, {"target_return": 50.0}):
        with pytest.raises(GenerateError, match="SAC training asked for"):
            generate_task("hopper-medium-v2", transitions=200, cache_dir=tmp_path / "c2", **training)
    assert trained == ["hopper-medium-v2"] * 3
    with pytest.raises(GenerateError, match="give one or the other"):
        generate_task("hopper-medium-v2", train_steps=300, policies=package, cache_dir=tmp_path / "c3")
    with pytest.raises(GenerateError, match="act in hopper v5, not v4"):
        generate_task("hopper-medium-v2", env_version="v4", cache_dir=tmp_path / "c3")
    # the stage: no flag needed
    out = tmp_path / "out"
    assert fetch.main(["--task", "hopper-medium-v2", "--source", "generate", "--transitions", "200",
                       "--cache", str(tmp_path / "c4"), "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "hopper-medium-v2.json").read_text())["origin"]["policies"] == str(package)


def test_policies_flag_errors_are_one_line(package, tmp_path, capsys):
    for argv, message in (
        (["--source", "generate", "--policies", str(package), "--train-steps", "300"], "give one or the other"),
        (["--source", "file", "--path", "x.hdf5", "--policies", str(package)], "--policies is for --source generate"),
        (["--source", "generate", "--policies", str(tmp_path / "none")], "manifest.json does not exist"),
        (["--source", "generate", "--policies", str(_cheetah_package(tmp_path / "p"))], "holds halfcheetah policies"),
    ):
        capsys.readouterr()
        assert fetch.main(["--task", "hopper-medium-v2", *argv, "--cache", str(tmp_path / "cache"),
                           "--out", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err, (message, err)
    assert not (tmp_path / "out").exists()


def test_dataset_report_puts_a_runs_real_buffer_beside_the_rebuilt_one(package, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(rollout, "POLICIES", package.parent)
    run, out = package.parent.parent / "run", tmp_path / "reports"
    args = [
        "--tasks",
        "hopper-medium-replay-v2",
        "--out",
        str(out),
        "--cache",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    assert dataset_report.main([*args, "--replay-run", str(run)]) == 0
    table = pd.read_csv(out / "datasets" / "summary.csv")
    assert table["task"].tolist() == ["hopper-medium-replay-v2"] and table["transitions"].item() == RUN["max_steps"]
    replay = pd.read_csv(out / "datasets" / "replay-hopper.csv")
    real, rebuilt = replay[replay["source"] == "real buffer"], replay[replay["source"] == "rebuilt"]
    episodes = replay_episodes(run)
    assert len(real) == len(episodes["returns"]) > 0 and real["length"].sum() <= RUN["max_steps"]
    np.testing.assert_allclose(
        real["normalized_return"], normalized_score("hopper-medium-replay-v2", episodes["returns"]), atol=1e-3
    )
    assert rebuilt["length"].sum() == RUN["max_steps"] and rebuilt["step"].between(0, RUN["max_steps"]).all()
    for png in ("returns.png", "replay-hopper.png"):
        assert (out / "datasets" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "datasets.md").read_text()
    assert "| hopper-medium-replay-v2 " in text and " / 2041 " in text and "real buffer" in text

    # a run the shipped policies did not come from: one line, exit 2, the report as it was
    monkeypatch.setattr(rollout, "POLICIES", rollout.Path(rollout.__file__).resolve().parents[1] / "policies")
    before = (out / "datasets.md").read_bytes()
    capsys.readouterr()
    assert dataset_report.main([*args, "--replay-run", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("error: ") and "\n" not in err and "is not the run the shipped hopper policies came from" in err
    )
    assert (out / "datasets.md").read_bytes() == before
