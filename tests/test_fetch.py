"""`python -m pipeline.fetch`: every source ends as DIR/<task>.hdf5 + DIR/<task>.json; bad input is one line, exit 2."""
from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from loopback import serve
from test_minari import make_minari_dataset

import odt.datasets.fetch
from odt.data import Trajectory
from odt.datasets.hdf5 import ends_with_tail, load_d4rl_hdf5, write_d4rl_hdf5
from odt.envs import load_fixed_obs, make_env
from odt.tasks import normalized_score
from pipeline import fetch

ROOT = Path(__file__).resolve().parents[1]


def _trajs(obs_dim, act_dim, lengths=(6, 9, 4), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [Trajectory(rng.normal(size=(n, obs_dim)).astype(dtype), rng.uniform(-1, 1, (n, act_dim)),
                       rng.uniform(0, 2, n), np.arange(n) == n - 1) for n in lengths]


@pytest.fixture
def hopper_file(tmp_path):
    """Three trajectories: a terminal, a timeout and a cut-off tail, stored as float64 like medium-replay."""
    trajs = _trajs(11, 3)
    trajs[1].terminals[:] = False
    trajs[2].terminals[:] = False
    path = write_d4rl_hdf5(tmp_path / "in" / "hopper.hdf5", trajs, metadata={"tail": True}, dtype=np.float64)
    return path, trajs


def test_file_source_writes_normalised_dataset_and_metadata(tmp_path, hopper_file):
    src, trajs = hopper_file
    out = tmp_path / "data" / "hopper-medium-v2"
    assert fetch.main(["--task", "hopper-medium-v2", "--source", "file", "--path", str(src), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["hopper-medium-v2"]  # no temp dirs left
    h5, meta_path = out / "hopper-medium-v2.hdf5", out / "hopper-medium-v2.json"
    assert sorted(p.name for p in out.iterdir()) == [h5.name, meta_path.name]
    with h5py.File(h5) as f:
        assert f["observations"].dtype == np.float32 and "next_observations" in f
    back = load_d4rl_hdf5(h5, "hopper-medium-v2")
    assert [len(t) for t in back] == [6, 9, 4]
    assert [bool(t.terminals[-1]) for t in back] == [True, False, False]
    assert ends_with_tail(h5)  # the tail stays a tail, not a timeout
    meta = json.loads(meta_path.read_text())
    returns = [t.episode_return for t in trajs]
    assert meta["source"] == "file" and meta["task"] == "hopper-medium-v2"
    assert (meta["n_trajectories"], meta["n_transitions"], meta["n_terminals"]) == (3, 19, 1)
    assert meta["return_mean"] == pytest.approx(np.mean(returns), rel=1e-5)
    assert meta["return_min"] == pytest.approx(min(returns), rel=1e-5)
    assert meta["return_max"] == pytest.approx(max(returns), rel=1e-5)
    assert meta["normalized_mean"] == pytest.approx(
        np.mean(normalized_score("hopper-medium-v2", np.array(returns))), rel=1e-5
    )
    assert meta["sha256"] == hashlib.sha256(h5.read_bytes()).hexdigest()
    assert meta["origin"]["input_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["fixed_obs"] is None and meta["tail"] is True
    # a second fetch replaces the directory as a whole
    assert fetch.main(["--task", "hopper-medium-v2", "--source", "file", "--path", str(src), "--out", str(out)]) == 0
    assert json.loads(meta_path.read_text())["sha256"] == meta["sha256"]


def test_ant_constant_contact_dims_are_recorded(tmp_path):
    trajs = _trajs(111, 8)
    for t in trajs:
        t.observations[:, 27:] = 0.0  # as in D4RL's ant files
    src = write_d4rl_hdf5(tmp_path / "ant.hdf5", trajs)
    out = tmp_path / "out"
    assert fetch.main(["--task", "ant-medium-v2", "--source", "file", "--path", str(src), "--out", str(out)]) == 0
    dims, values = load_fixed_obs(out / "ant-medium-v2.json")
    np.testing.assert_array_equal(dims, np.arange(27, 111))
    np.testing.assert_array_equal(values, np.zeros(84))
    obs, _ = make_env("ant-medium-v2", fixed_obs=(dims, values)).reset(seed=0)
    assert obs.shape == (111,) and not obs[27:].any()


def _bad_cases(tmp_path, hopper_file):
    src, _ = hopper_file
    junk = tmp_path / "junk.hdf5"
    junk.write_text("not hdf5\n")
    nan = tmp_path / "nan.hdf5"
    with h5py.File(nan, "w") as f:
        obs = np.zeros((5, 11))
        obs[2, 0] = np.nan
        for k, v in (("observations", obs), ("actions", np.zeros((5, 3))), ("rewards", np.zeros(5)),
                     ("terminals", np.zeros(5, bool)), ("timeouts", np.zeros(5, bool))):
            f.create_dataset(k, data=v)
    return [
        (["--task", "hopper-medium-v2", "--source", "file", "--path", str(tmp_path / "absent.hdf5")], "no such file"),
        (
            ["--task", "walker2d-medium-v2", "--source", "file", "--path", str(src)],
            "has 11 dims but walker2d-medium-v2 needs 17",
        ),
        (["--task", "hopper-medium-v2", "--source", "file", "--path", str(junk)], "not an HDF5 file"),
        (["--task", "hopper-medium-v2", "--source", "file", "--path", str(nan)], "NaN or inf"),
        (["--task", "hoper-medium-v2", "--source", "file", "--path", str(src)], "did you mean hopper-medium-v2"),
        (["--task", "hopper-medium-v2", "--source", "file"], "--source file needs --path"),
        (["--task", "hopper-medium-v2", "--source", "ftp"], "invalid choice: 'ftp'"),
        (
            ["--task", "hopper-medium-v2", "--source", "file", "--path", str(src), "--url", "http://x/y.hdf5"],
            "--url is for --source d4rl",
        ),
        (
            ["--task", "hopper-medium-v2", "--source", "generate", "--train-steps", "0"],
            "--train-steps must be positive",
        ),
        (["--task", "antmaze-umaze-v2", "--source", "generate"], "use --source d4rl or --source minari"),
        (["--task", "hopper-medium-v2", "--source", "minari"], "no Minari dataset holds D4RL's data"),
    ]


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, hopper_file, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old output\n")
    for argv, message in _bad_cases(tmp_path, hopper_file):
        capsys.readouterr()
        assert fetch.main([*argv, "--out", str(out), "--cache", str(tmp_path / "cache")]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert message in err, (message, err)
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # the old output is untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_failure_while_writing_leaves_old_output(tmp_path, hopper_file, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old output\n")

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(odt.datasets.fetch, "write_json", broken)
    assert (
        fetch.main(["--task", "hopper-medium-v2", "--source", "file", "--path", str(hopper_file[0]), "--out", str(out)])
        == 1
    )
    assert capsys.readouterr().err.splitlines() == [f"error: cannot write {out}: disk full"]  # one line, no traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_cli_error_is_one_line_on_stderr(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.fetch", "--task", "hopper-medium-v2", "--source", "file",
         "--path", str(tmp_path / "missing.hdf5"), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "missing.hdf5: no such file" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_d4rl_source_downloads_from_loopback_with_a_drop(tmp_path, hopper_file):
    src, _ = hopper_file
    data = src.read_bytes()
    out = tmp_path / "out"
    with serve({"/hopper_medium-v2.hdf5": data}, drops={"/hopper_medium-v2.hdf5": 1}) as (base, server):
        argv = ["--task", "hopper-medium-v2", "--source", "d4rl", "--url", base + "/hopper_medium-v2.hdf5",
                "--cache", str(tmp_path / "cache"), "--no-progress", "--out", str(out)]
        assert fetch.main(argv) == 0
        assert len(server.requests) == 2 and server.requests[1][1] is not None  # resumed with Range
        assert fetch.main(argv) == 0
        assert len(server.requests) == 2  # the cached file is reused
    assert (tmp_path / "cache" / "d4rl" / "hopper_medium-v2.hdf5").read_bytes() == data
    meta = json.loads((out / "hopper-medium-v2.json").read_text())
    assert meta["source"] == "d4rl" and meta["origin"]["url"].endswith("/hopper_medium-v2.hdf5")
    assert meta["n_trajectories"] == 3


def test_d4rl_unreachable_names_url_and_way_out(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/hopper_medium-v2.hdf5"
    code = fetch.main(["--task", "hopper-medium-v2", "--source", "d4rl", "--url", url, "--cache", str(tmp_path),
                       "--no-progress", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and url in err and "--source generate" in err
    assert not (tmp_path / "out").exists()


def test_minari_source_for_antmaze(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    stored = make_minari_dataset("D4RL/antmaze/umaze-diverse-v1", make_env("antmaze-umaze-diverse-v2").env, [10, 13, 8])
    out = tmp_path / "out"
    assert fetch.main(["--task", "antmaze-umaze-diverse-v2", "--source", "minari", "--out", str(out)]) == 0
    back = load_d4rl_hdf5(out / "antmaze-umaze-diverse-v2.hdf5", "antmaze-umaze-diverse-v2")  # discontinuity rule
    assert [len(t) for t in back] == [len(ep["rewards"]) for ep in stored]
    meta = json.loads((out / "antmaze-umaze-diverse-v2.json").read_text())
    assert meta["origin"]["minari_id"] == "D4RL/antmaze/umaze-diverse-v1" and meta["obs_dim"] == 29


@pytest.mark.slow
def test_generate_source_end_to_end(tmp_path):
    args = ["--source", "generate", "--seed", "1", "--train-steps", "200", "--transitions", "300",
            "--cache", str(tmp_path / "cache"), "--no-progress"]
    for task in ("hopper-medium-v2", "hopper-medium-replay-v2"):
        assert fetch.main(["--task", task, *args, "--out", str(tmp_path / task)]) == 0
    runs = [p for p in (tmp_path / "cache" / "generate").iterdir() if p.is_dir()]
    assert len(runs) == 1  # one SAC run for both tasks
    med = json.loads((tmp_path / "hopper-medium-v2" / "hopper-medium-v2.json").read_text())
    rep = json.loads((tmp_path / "hopper-medium-replay-v2" / "hopper-medium-replay-v2.json").read_text())
    assert med["n_transitions"] == 300 and rep["n_transitions"] == 200
    assert "not D4RL data" in med["note"] and med["origin"]["seed"] == 1
    assert med["origin"]["run_dir"] == rep["origin"]["run_dir"]
