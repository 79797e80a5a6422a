"""Every benchmark runs at a tiny size and returns well-formed results (speed targets are not tested here)."""
import json
import math

import numpy as np
import pytest

from benchmarks import e2e, gpu, health, memory, mlflow_logging, online, rollout, run, sampler, threads, update
from benchmarks.common import Result, synthetic_trajectories
from odt.replay import TrajectoryReplayBuffer


def check(result: Result, key: str, n_figures: int) -> None:
    assert result.key == key and result.skipped is None
    assert len(result.figures) == n_figures
    for f in result.figures:
        assert f.values and all(math.isfinite(v) and v > 0 for v in f.values), (f.name, f.values)
        assert f.min <= f.median <= f.max
        assert f.met in (True, False, None)
        assert f.met is None or f.target
    json.dumps(result.to_dict())  # the report stores it as JSON


def test_loop_baseline_rebuilds_odt_batches_exactly():
    """Both samplers have the same semantics: the loop's segment() reproduces every odt segment."""
    trajs = synthetic_trajectories(30, min_len=1, max_len=40, seed=3)
    buf = TrajectoryReplayBuffer(100, trajs)
    K = 8
    b = buf.sample(64, K, np.random.default_rng(0))
    assert b.padded
    stored = buf.trajectories
    for i in range(64):
        first = int(b.mask[i].argmax())
        start = int(b.timesteps[i, first])
        seg = sampler.segment(stored[b.trajectory_ids[i]], start, K)
        for got, want in zip(
            seg, (b.states[i], b.actions[i], b.rewards[i], b.returns_to_go[i], b.timesteps[i], b.mask[i])
        ):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    out = sampler.loop_sample(stored, 16, K, np.random.default_rng(1))
    assert [a.shape for a in out] == [(16, K, 11), (16, K, 3), (16, K), (16, K), (16, K), (16, K)]


def test_sampler_benchmark():
    r = sampler.run(repeats=2, batch_size=16, context_len=5, n_traj=20, max_len=50, loop_calls=2, odt_calls=5)
    check(r, "sampler", 2)
    assert len(r.rows) == 3


def test_update_benchmark():
    r = update.run(configs={(16, 1, 1): 1}, repeats=2, batch_size=4, context_len=3)
    check(r, "update", 1)
    assert {row["step"] for row in r.rows} == {"update", "bare"}


def test_rollout_benchmark():
    r = rollout.run(num_envs=(1, 2), steps=4, repeats=2, model=dict(embed_dim=16, n_layer=1, n_head=1))
    check(r, "rollout", 6)  # explore, eval, ceiling for each N
    assert [f.met for f in r.figures if "N=1 " in f.name] == [None, None]
    assert all(row["median_steps_per_s"] > 0 for row in r.rows)


def test_memory_benchmark_counts_one_copy():
    r = memory.run(transitions=4_000, n_traj=8, updates=1)
    check(r, "memory", 3)
    copies = r.figures[0]
    assert copies.met and 1.0 < copies.median < 1.1  # the buffer's RTG column on top of the data


def test_held_bytes_counts_views_once():
    base = np.zeros((100, 4), np.float32)
    assert memory.held_bytes([base[:10], base[10:], base]) == base.nbytes
    assert memory.held_bytes([base[:10], np.zeros(5, np.float32)]) == base.nbytes + 20


def test_logging_benchmark():
    r = mlflow_logging.run(repeats=1, quick=True)
    check(r, "logging", 1)
    assert r.rows[0]["tracking_calls"] >= 5 and r.rows[0]["rows"] >= 1


def test_online_benchmark_measures_every_algorithm():
    r = online.run(samples=200, repeats=1)
    check(r, "online", 2)
    assert {row["algorithm"] for row in r.rows} == {"ODT", "IQL", "SAC"}
    assert all(row["env steps/s (median)"] > 0 for row in r.rows)


def test_gpu_benchmark_says_when_there_is_no_gpu():
    r = gpu.run(updates=1, warmup=0, configs=((16, 1, 1),), batch_size=4, context_len=3, ratio_repeats=1,
                seeds=(1, 2), seed_config=(16, 1, 1), seconds=0.5, chunk=2, rounds=1)
    if r.skipped is not None:
        assert "no GPU found" in r.skipped and not r.figures
    else:  # eager and captured updates/s, their ratio and memory; update/bare; round shares; 2 x 2 seed sharing
        check(r, "gpu", 5 + 1 + 3 + 4)
        assert "capture FAILED" not in " ".join(f.name for f in r.figures)
        assert not [n for n in r.notes if "FAILED" in n] and any("paper profile" in n for n in r.notes)
    r = rollout.run(num_envs=(2,), steps=3, repeats=1, model=dict(embed_dim=16, n_layer=1, n_head=1), device="cuda")
    if r.skipped is not None:
        assert "no GPU found" in r.skipped and not r.figures
    else:
        check(r, "rollout_gpu", 4)  # explore, eval, eval without graph, ceiling


def test_threads_benchmark():
    r = threads.run(configs=("quick",), updates=2, repeats=1, transitions=2_000)
    if r.skipped is not None:
        assert "one core" in r.skipped
    else:
        check(r, "threads", 2)  # idle and loaded ratios
        assert {(row["machine"], row["threads"]) for row in r.rows} >= {("idle", 1), ("loaded", 1)}


def test_paper_profile_hours_from_rates():
    """10 tasks: 74k pretraining updates; 10 x 10 seeds x 300 updates x 200 rounds of full 1000-step episodes."""
    pre, fine, total = gpu.paper_profile_hours(49.0, 1000.0)
    assert pre == pytest.approx(74_000 / 49 / 3600)
    assert fine == pytest.approx(10 * 10 * 300 * 200 / 1000 / 3600)
    assert total == pytest.approx(pre + fine)


def test_e2e_stage_split():
    lines = [(0.5, "noise"), (2.0, "Running stage 'fetch@hopper':"), (3.0, "> python -m pipeline.fetch"),
             (10.0, "Running stage 'pretrain@hopper':"), (30.0, "Updating lock file 'dvc.lock'")]
    assert e2e.stage_times(lines, 40.0) == [("fetch@hopper", 8.0), ("pretrain@hopper", 30.0)]


def test_run_writes_report_and_rejects_bad_names(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert run.main(["--only", "sampler,gpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Batch sampler" in text and "## GPU path" in text and "--only sampler,gpu --quick" in text
    sections = json.loads(out.with_suffix(".json").read_text())["sections"]
    assert sections["sampler"]["figures"][0]["median"] > 0 and sections["sampler"]["machine"]["cores"] >= 1
    with pytest.raises(SystemExit) as exc:
        run.main(["--only", "samplr", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --only: unknown benchmark 'samplr'")


def test_health_summary_takes_every_variant(tmp_path):
    names = list(health.VARIANTS)  # all 13: the plot splits them over its two axes
    runs = [{"variant": n, "seed": s, "wall_time": 1.0, "rows": [{"updates": 100, "nll": 0.5}],
             "evaluations": [{"updates": u, "eval_normalized": float(i + s + u / 1000), "eval_length_std": 2.0}
                             for u in (3000, 4000, 5000)]}
            for i, n in enumerate(names) for s in range(2)]
    health.write_summary(tmp_path, runs, names)
    lines = (tmp_path / "summary.md").read_text().splitlines()[2:]
    assert [line.split(" | ")[0].lstrip("| ") for line in lines] == names
    # variant 1: finals 6 and 7 (mean 6.5 ± 0.5), bests the same, at 3000: mean of 4 and 5
    assert lines[1].split(" | ")[1:6] == ["2", "6.5 ± 0.5", "6.5", "1.00", "4.5"]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert len((tmp_path / "variants.csv").read_text().splitlines()) == 1 + len(names) * 2 * 3
