"""Hostile input, each caught once at the edge: one `error:` line, exit 2, nothing written.

A truncated pretrained checkpoint, a dataset file altered after its fetch (one bit), a
directory given as the dataset file, actions outside [-1, 1], YAML syntax errors,
model-level validation errors, an unknown top-level key, a bad value in another task, a
bad flag (fast: importing a stage does not import torch).
"""
from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from finetune_stage import FT_TASK as TASK
from finetune_stage import stage_cmd, stage_inputs

from odt.datasets.hdf5 import DatasetError, load_d4rl_hdf5, write_d4rl_hdf5
from pipeline import iql, jobs, paths, pretrain, seeds, tune, validate
from pipeline.params import load_params, parse_params
from pipeline.profile import render

ROOT = Path(__file__).resolve().parents[1]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_a_truncated_pretrained_checkpoint_is_one_line_before_any_seed_or_mlflow_run(pretrained, tmp_path):
    root = stage_inputs(tmp_path / "repo", pretrained)
    bad = paths.pretrained(root, TASK, 2)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    old = paths.run_dir(root, TASK, "finetune") / "seed_0"  # outputs of an earlier run stay as they were
    old.mkdir(parents=True)
    (old / "result.json").write_text("old\n")
    (root / "runs" / TASK / "finetune.json").write_text("old\n")
    before = tree(root)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(stage_cmd("finetune", root), cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith(f"error: checkpoint {bad} cannot be read (") and line.endswith(
        f"; restore it with `dvc checkout pretrain@{TASK}` or `dvc repro -f pretrain@{TASK}`")
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run: the store was never opened
    assert not (root / ".cache").exists() and tree(root) == before  # no seed started, nothing written


def flip_bit(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_dataset_altered_after_its_fetch_stops_the_stage_before_any_seed_or_mlflow_run(fetched, tmp_path):
    data, meta = paths.dataset(fetched, TASK), paths.dataset_meta(fetched, TASK)
    assert json.loads(meta.read_text())["sha256"]
    middle = data.stat().st_size // 2  # in the observations: the file still loads, and was trained on as it was
    flip_bit(data, middle)
    load_d4rl_hdf5(data, TASK)
    before = tree(fetched)
    cmd = [sys.executable, "-m", "pipeline.pretrain", "--task", TASK, "--root", str(fetched),
           "--params", str(fetched / "params.yaml")]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr) == (
        f"error: {data} does not match the sha256 its fetch recorded in {meta}; "
        f"restore it with `dvc checkout fetch@{TASK}` or `dvc repro -f fetch@{TASK}`")
    assert not (tmp_path / "mlflow.db").exists()  # no MLflow run: the store was never opened
    assert tree(fetched) == before  # no work or run directory: no seed started

    flip_bit(data, middle)  # restored: the stage runs
    proc = subprocess.run([*cmd, "--no-track"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (paths.run_dir(fetched, TASK, "pretrain") / "seed_0" / "checkpoint.pt").is_file()


def test_every_stage_that_reads_the_dataset_checks_it_and_a_dataset_without_a_record_is_taken_as_it_is(
        fetched, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params, plans = load_params(fetched / "params.yaml")
    data, meta = paths.dataset(fetched, TASK), paths.dataset_meta(fetched, TASK)
    flip_bit(data, 0)  # the HDF5 signature: not even a readable file now
    before = tree(fetched)
    def seeds_stage(build):  # bound now: a lambda in the loop would see the loop's last `build`
        return lambda: seeds.run(build(plans[TASK], params, root=fetched))

    builders = (jobs.pretrain_stage, functools.partial(jobs.pretrain_stage, dt=True), iql.stage, jobs.finetune_stage)
    for run_stage in (*map(seeds_stage, builders),
                      lambda: tune.run(plans[TASK], params, "finetune", root=fetched, track=False)):
        with pytest.raises(DatasetError, match="does not match the sha256 its fetch recorded"):
            run_stage()
    assert not (tmp_path / "mlflow.db").exists() and tree(fetched) == before

    record = json.loads(meta.read_text())
    meta.write_text("{not json")
    with pytest.raises(DatasetError) as err:
        paths.existing_dataset(fetched, TASK)
    assert str(err.value) == (f"{meta} is not the JSON its fetch wrote; restore it with `dvc checkout fetch@{TASK}` "
                              f"or `dvc repro -f fetch@{TASK}`")
    # no sha256 recorded, or no .json at all (a file put there by hand): nothing to check it against
    meta.write_text(json.dumps({k: v for k, v in record.items() if k != "sha256"}))
    assert paths.existing_dataset(fetched, TASK) == data
    meta.unlink()
    assert paths.existing_dataset(fetched, TASK) == data


def hdf5_copy(src: Path, dst: Path, scale_actions: float = 1.0) -> Path:
    trajectories = load_d4rl_hdf5(src)
    for t in trajectories:
        t.actions = t.actions * scale_actions
    return write_d4rl_hdf5(dst, trajectories)


def fetch_file(path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.fetch",
            "--task",
            TASK,
            "--source",
            "file",
            "--path",
            str(path),
            "--out",
            str(out),
            "--no-progress",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_directory_given_as_the_dataset_file_is_named_a_directory(tmp_path, hopper_random_hdf5):
    folder = tmp_path / "downloads"
    hdf5_copy(hopper_random_hdf5, folder / "hopper_medium-v2.hdf5")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old output\n")
    proc = fetch_file(folder, out)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (f"error: --path {folder} is a directory (it holds hopper_medium-v2.hdf5); "
                                     "--path names the D4RL-layout .hdf5 file itself")
    assert tree(out) == {"keep.txt": b"old output\n"}
    with pytest.raises(DatasetError) as err:  # the library says it too, and gives no --source hint where none applies
        load_d4rl_hdf5(folder)
    assert str(err.value) == f"{folder} is a directory, not an HDF5 file; name the .hdf5 file itself"
    with pytest.raises(DatasetError) as err:
        load_d4rl_hdf5(tmp_path / "absent.hdf5")
    assert str(err.value) == f"{tmp_path / 'absent.hdf5'}: no such file"
    assert "--source generate" not in fetch_file(tmp_path / "absent.hdf5", out).stderr


def test_actions_outside_the_unit_box_are_rejected_or_clipped_on_request(tmp_path, hopper_random_hdf5):
    data = hdf5_copy(hopper_random_hdf5, tmp_path / "wide.hdf5", scale_actions=1.5)
    with h5py.File(data) as f:
        actions = f["actions"][()]
    outside = int((np.abs(actions) > 1).sum())
    assert outside > 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old output\n")
    proc = fetch_file(data, out)
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (
        f"error: {data}: {outside} of {actions.size} action values lie outside [-1, 1] (min {actions.min():.4g}, "
        f"max {actions.max():.4g}); fix the data, or pass --clip-actions (fetch block: clip-actions: true) to clip them"
    )
    assert tree(out) == {"keep.txt": b"old output\n"}

    proc = fetch_file(data, out, "--clip-actions")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [f"warning: {outside} of {actions.size} action values were outside [-1, 1] and "
                                        "are clipped to it (--clip-actions)"]
    clipped = load_d4rl_hdf5(out / f"{TASK}.hdf5")
    np.testing.assert_array_equal(np.concatenate([t.actions for t in clipped]), np.clip(actions, -1, 1))
    assert json.loads((out / f"{TASK}.json").read_text())["clipped_actions"] == outside
    # the params.yaml key that DVC turns into the flag
    raw = yaml.safe_load(render("tiny", root=ROOT))
    raw["tasks"][TASK]["fetch"]["clip-actions"] = True

    assert parse_params(raw).tasks[TASK].fetch.as_args()["clip-actions"] is True


def params_file(tmp_path: Path, edit=None, text: str | None = None) -> Path:
    raw = yaml.safe_load(render("tiny", root=ROOT))
    if edit:
        edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(raw, sort_keys=False))
    return path


def stage_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    return one_line(capsys.readouterr().err)


def test_an_unknown_top_level_key_stops_every_stage_and_the_params_stage(tmp_path, capsys):
    path = params_file(tmp_path, lambda raw: raw.__setitem__("seedz", raw.pop("seeds")))
    out = tmp_path / "runs" / "params.ok"
    message = f"error: invalid {path}: unknown field 'seedz' (check the spelling)"
    assert stage_error(capsys, validate.main, ["--params", str(path), "--out", str(out)]) == message
    assert not out.exists()
    assert (
        stage_error(capsys, pretrain.main, ["--task", TASK, "--params", str(path), "--root", str(tmp_path)]) == message
    )
    assert not (tmp_path / "runs").exists()
    params_file(tmp_path)
    assert validate.main(["--params", str(path), "--out", str(out)]) == 0
    # the same text whatever the params: stages after it re-run on their keys only
    assert out.read_text() == validate.OK


def test_a_bad_value_in_another_task_stops_this_tasks_stage(tmp_path, capsys):
    other = "hopper-medium-replay-v2"
    path = params_file(tmp_path, lambda raw: raw["tasks"][other]["finetune"].__setitem__("updates_per_round", 0))
    err = stage_error(capsys, pretrain.main, ["--task", TASK, "--params", str(path), "--root", str(tmp_path)])
    assert err == f"error: invalid params.yaml tasks.{other}.finetune: updates_per_round = 0: must be greater than 0"


def test_yaml_syntax_errors_keep_line_and_column(tmp_path, capsys):
    text = render("tiny", root=ROOT).replace("seeds: 10\n", "seeds: [10\n")
    line = text.splitlines().index("seeds: [10") + 1
    path = params_file(tmp_path, text=text)
    err = stage_error(capsys, pretrain.main, ["--task", TASK, "--params", str(path), "--root", str(tmp_path)])
    assert text.splitlines()[line] == "device: cpu"  # where PyYAML finds the problem: its ':'
    assert err == (f"error: {path} is not valid YAML: line {line + 1}, column 7: expected ',' or ']', but got ':' "
                   f"(while parsing a flow sequence, line {line})")


def test_a_model_level_validation_error_names_the_fields(tmp_path, capsys):
    path = params_file(tmp_path, lambda raw: raw["tasks"][TASK]["model"].update(embed_dim=30, n_head=4))
    err = stage_error(capsys, pretrain.main, ["--task", TASK, "--params", str(path), "--root", str(tmp_path)])
    assert err == f"error: invalid params.yaml tasks.{TASK}.model: embed_dim (30) must be divisible by n_head (4)"
    assert "ArgsKwargs" not in err and "(root)" not in err


def test_a_bad_flag_is_one_line_at_once_and_no_stage_imports_torch_to_parse_its_flags():
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline.pretrain", "--bogus"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2
    assert one_line(proc.stderr) == ("error: the following arguments are required: --task "
                                     "(see python -m pipeline.pretrain --help)")
    assert elapsed < 5, elapsed  # was 7-9 s: torch before the flags
    stages = ["fetch", "pretrain", "finetune", "dt", "iql", "sac", "report", "tune", "profile", "validate"]
    code = (
        f"import sys\nfor s in {stages}: __import__('pipeline.' + s)\n"
        "print(sorted(m for m in ('torch', 'gymnasium', 'h5py', 'mlflow', 'optuna', 'joblib') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]"
