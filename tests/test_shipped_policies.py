"""The behaviour policies shipped in odt/policies/<env>: every file as its manifest says, small enough for git, and
each medium policy still returning what its manifest measured when it was trained."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from odt.datasets.behaviour import ENVS, load_actor, task_spec
from odt.datasets.download import sha256_file
from odt.datasets.rollout import POLICIES
from odt.envs import make_vector_env
from odt.evaluation import eval_seeds, run_episodes

SHIPPED = sorted(p.parent.name for p in POLICIES.glob("*/manifest.json"))
MAX_BYTES = 20_000_000  # all packages together: what the issue allows in git
EPISODES = 10
SE = 3.0  # the rollout's mean return within this many standard errors of the manifest's (Welch's)


def _manifest(env: str) -> dict:
    return json.loads((POLICIES / env / "manifest.json").read_text())


def test_the_shipped_packages_are_the_known_envs_and_fit_in_git():
    assert SHIPPED and set(SHIPPED) <= set(ENVS)
    total = sum(p.stat().st_size for p in POLICIES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= MAX_BYTES, f"{total / 1e6:.1f} MB of behaviour policies"


@pytest.mark.parametrize("env", SHIPPED)
def test_every_shipped_file_matches_its_manifest(env):
    manifest, package = _manifest(env), POLICIES / env
    spec = task_spec(env)
    assert manifest["env"] == env and manifest["gym_id"].lower().startswith(env)
    assert (manifest["obs_dim"], manifest["act_dim"]) == (spec.obs_dim, spec.act_dim)
    files = [e["file"] for e in manifest["snapshots"]]
    assert sorted(p.name for p in package.iterdir() if p.suffix == ".pt") == sorted(files)
    assert manifest["medium"] == files[-1] and manifest["reached_target"]
    assert [e["step"] for e in manifest["snapshots"]] == sorted(e["step"] for e in manifest["snapshots"])
    assert sum(e["transitions"] for e in manifest["snapshots"]) == manifest["steps"]
    for entry in manifest["snapshots"]:
        path = package / entry["file"]
        assert sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"], entry["file"]
        assert all(v.dtype == torch.float16 for v in torch.load(path, weights_only=True).values())
    check = manifest["fp16_check"]
    assert check["same"] and check["episodes"] >= 30 and check["max_action_error"] <= check["tolerance"]


@pytest.mark.slow
@pytest.mark.parametrize("env", SHIPPED)
def test_the_medium_policy_returns_what_its_manifest_says(env):
    """Stochastic, as the data is rolled out; the manifest's return is the float32 policy's at training time."""
    manifest = _manifest(env)
    entry = next(e for e in manifest["snapshots"] if e["file"] == manifest["medium"])
    actor, noise = load_actor(POLICIES / env), torch.Generator().manual_seed(0)
    envs = make_vector_env(task_spec(env), EPISODES, manifest["env_version"])
    try:
        returns = run_episodes(lambda o: actor.act(o, generator=noise).numpy(), envs,
                               eval_seeds(12345, 0, EPISODES)).returns
    finally:
        envs.close()
    se = np.sqrt(returns.var(ddof=1) / EPISODES + entry["eval_return_std"] ** 2 / manifest["eval_episodes"])
    assert abs(returns.mean() - entry["eval_return"]) <= SE * se, (returns.mean(), entry["eval_return"], se)
    assert returns.mean() >= manifest["target_return"] - SE * se  # medium level, as trained
