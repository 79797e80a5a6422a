"""The update as one CUDA graph (odt/update_graph.py): the capturable path (odt.optim, packed batches), capture,
fallback, prefetch, and no host sync in the update loop.

On the CPU a real capture cannot happen; `ReplayingGraph` stands in for CudaGraphUpdate
with its contract (nothing runs at capture; each call copies the batch into a static
buffer and overwrites static metric tensors), so GraphedUpdate's and the trainer's side of
it are checked here. The GPU-only test compares a real capture with the eager update.
"""
import copy
import warnings

import numpy as np
import pytest
import pytorch_optimizer
import torch
from host_sync import assert_no_host_sync
from synthetic import policy_dataset

import odt.optim
import odt.update_graph
from odt.config import FinetuneConfig, ModelConfig, OptimConfig
from odt.divergence import Diverged
from odt.replay import TrajectoryReplayBuffer
from odt.trainer import ODTTrainer
from odt.update_graph import GRAPH_WARMUP

TINY = dict(embed_dim=32, n_layer=1, n_head=2, dropout=0.1, context_len=5, max_ep_len=1000)


def trainer(*, cuda_graph=None, device="cpu", seed=0, length=50, **optim):
    trajs = policy_dataset(length=length)
    mcfg = ModelConfig(state_dim=6, act_dim=2, reward_scale=0.1, **TINY)
    cfg = OptimConfig(**{"batch_size": 32, "learning_rate": 3e-3, "weight_decay": 1e-4, "warmup_steps": 20, **optim})
    return ODTTrainer(mcfg, cfg, TrajectoryReplayBuffer(1000, trajs), seed=seed, device=device, cuda_graph=cuda_graph)


def run(t: ODTTrainer) -> ODTTrainer:
    """Torch's RNG (dropout, rsample) is one global stream: reseed right before a trainer's turn."""
    t.reseed(t.seed)
    return t


def params_of(t):
    return [p.detach().clone() for p in t.model.parameters()]


def max_rel_diff(a, b):
    return max(((p - q).abs().max() / q.abs().max().clamp_min(1e-6)).item() for p, q in zip(a, b))


class ReplayingGraph:
    """CudaGraphUpdate's contract without CUDA: nothing runs at capture, a call replays the step on a static buffer."""

    captures: list = []

    def __init__(self, step, packed):
        self.step, self.packed = step, packed.clone()
        self.metrics = None
        ReplayingGraph.captures.append(tuple(packed.shape))

    def __call__(self, packed):
        self.packed.copy_(packed)
        out = self.step(self.packed)
        if self.metrics is None:
            self.metrics = {k: torch.empty_like(v) for k, v in out.items()}
        for k, v in out.items():  # static outputs, overwritten by every replay
            self.metrics[k].copy_(v)
        return self.metrics


class FailingCapture:
    def __init__(self, step, packed):
        raise RuntimeError("simulated capture failure")


def eager_updates(t: ODTTrainer, n: int) -> list[dict[str, float]]:
    """The capturable path's eager update, step by step, without any capture attempt."""
    out = []
    for _ in range(n):
        staged = t._graph.stage(t._sample())
        out.append({k: float(v) for k, v in t._step(t._graph.unpack(staged.packed(), staged.padded)).items()})
        t.num_updates += 1
    return out


def test_a_failed_capture_warns_once_in_one_line_and_gives_the_eager_numbers(monkeypatch):
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", FailingCapture)
    a, b = trainer(cuda_graph=True), trainer(cuda_graph=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logged = run(a).train_updates(12)
    messages = [str(w.message) for w in caught]
    assert messages == ["CUDA graph capture of the update failed (simulated capture failure); updates run eagerly"]
    assert not a.graphed
    steps = eager_updates(run(b), 12)
    assert all(torch.equal(x, y) for x, y in zip(params_of(a), params_of(b)))
    assert logged["loss"] == pytest.approx(np.mean([s["loss"] for s in steps]), rel=1e-6)
    assert a.num_updates == b.num_updates == 12


def test_capture_comes_after_the_warmup_once_per_shape_and_again_after_a_phase_change(monkeypatch):
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", ReplayingGraph)
    ReplayingGraph.captures = []
    t = trainer(cuda_graph=True)
    t.train_updates(GRAPH_WARMUP)
    assert ReplayingGraph.captures == [] and not t.graphed
    t.train_updates(10)
    assert ReplayingGraph.captures == [(32, 5, 6 + 2 + 3)] and t.graphed
    # other values, other batch shape
    t.switch_phase(FinetuneConfig(batch_size=16, learning_rate=1e-3, warmup_steps=20))
    assert not t.graphed
    t.train_updates(GRAPH_WARMUP + 2)
    assert ReplayingGraph.captures == [(32, 5, 11), (16, 5, 11)] and t.graphed
    # the new rate, warmup position kept (18 updates)
    assert t.scheduler.get_last_lr()[0] == pytest.approx(1e-3 * 19 / 20)


def test_replayed_updates_give_the_eager_numbers_and_fresh_metrics(monkeypatch):
    """Static outputs overwritten by each replay must not leak into sums or returned metrics."""
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", ReplayingGraph)
    a = run(trainer(cuda_graph=True))
    a.train_updates(GRAPH_WARMUP)
    first, second = a.update(), a.update()  # both replayed
    assert a.graphed and first["loss"] is not second["loss"]
    logged = a.train_updates(10)
    b = run(trainer(cuda_graph=True))
    eager_updates(b, GRAPH_WARMUP)
    steps = eager_updates(b, 12)
    assert float(first["loss"]) == pytest.approx(steps[0]["loss"], rel=1e-4)
    assert float(second["loss"]) == pytest.approx(steps[1]["loss"], rel=1e-4)
    # the replay always takes the masked path (a mask of ones when nothing is padded): float-close, not equal
    assert logged["loss"] == pytest.approx(np.mean([s["loss"] for s in steps[2:]]), rel=1e-4)
    assert logged["entropy"] == pytest.approx(np.mean([s["entropy"] for s in steps[2:]]), rel=1e-4)
    assert max_rel_diff(params_of(a), params_of(b)) < 1e-4


@pytest.mark.filterwarnings("ignore:CUDA graph capture of the update failed")
def test_the_capturable_path_is_the_library_path_to_float_tolerance():
    """Packed batches, odt.optim's LAMB and warmup give what pytorch-optimizer's Lamb and LambdaLR give."""
    lib, ours = trainer(), trainer(cuda_graph=True)  # on the CPU the capture fails: eager
    assert isinstance(lib.optimizer, pytorch_optimizer.Lamb) and isinstance(ours.optimizer, odt.optim.Lamb)
    start = params_of(lib)
    a, b = run(lib).train_updates(30), run(ours).train_updates(30)
    assert max_rel_diff(params_of(ours), params_of(lib)) < 1e-4
    assert max_rel_diff(params_of(lib), start) > 0.05  # they moved
    for k in ("loss", "nll", "entropy", "temperature", "grad_norm"):
        assert b[k] == pytest.approx(a[k], rel=1e-4), k
    assert b["learning_rate"] == pytest.approx(a["learning_rate"], rel=1e-6)


@pytest.mark.filterwarnings("ignore:CUDA graph capture of the update failed")
def test_a_checkpoint_moves_between_the_two_lambs():
    a = trainer(cuda_graph=True, warmup_steps=10)
    a.train_updates(5)
    state = copy.deepcopy(a.state_dict())  # RNG streams included; a copy, as a file is (loading aliases tensors)
    b = ODTTrainer.from_state(copy.deepcopy(state), device="cpu", cuda_graph=False)
    assert [g["step"] for g in b.optimizer.param_groups] == [5, 5] and b.scheduler.last_epoch == 5
    assert b.scheduler.get_last_lr() == pytest.approx(a.scheduler.get_last_lr())
    c = ODTTrainer.from_state(copy.deepcopy(b.state_dict()), device="cpu", cuda_graph=True)
    assert c.scheduler.last_epoch == 5 and float(c.optimizer.param_groups[0]["step"]) == 5
    for t in (a, b, c):
        torch.set_rng_state(state["torch_rng"])  # each continues from the saved streams
        t.train_updates(5)
    assert max_rel_diff(params_of(b), params_of(a)) < 1e-4
    assert max_rel_diff(params_of(c), params_of(a)) < 1e-4
    assert b.scheduler.get_last_lr()[0] == pytest.approx(3e-3)  # the warmup went on from 5 to 10


@pytest.mark.parametrize("cuda_graph", [False, True])
def test_train_updates_one_batch_ahead_gives_the_numbers_of_single_updates(monkeypatch, cuda_graph):
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", ReplayingGraph)
    a, b = trainer(cuda_graph=cuda_graph), trainer(cuda_graph=cuda_graph)
    logged = run(a).train_updates(9)
    run(b)
    single = [{k: float(v) for k, v in b.update().items()} for _ in range(9)]
    assert all(torch.equal(x, y) for x, y in zip(params_of(a), params_of(b)))
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert logged["loss"] == pytest.approx(np.mean([s["loss"] for s in single]), rel=1e-6)


def test_the_capturable_update_makes_no_host_sync(monkeypatch):
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", ReplayingGraph)
    t = trainer(cuda_graph=True)
    with assert_no_host_sync() as calls:
        for _ in range(GRAPH_WARMUP + 2):  # eager warm-ups, the capture, replays
            t.update()
    assert calls == [] and t.graphed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: a real graph capture")
def test_the_captured_update_equals_the_eager_update_on_cuda(monkeypatch):
    # 6-step trajectories, K = 5: every batch has padding, so eager and graph take the same masked
    # attention path (same kernels, same dropout draws); bf16 autocast, dropout and rsample on
    graphed = trainer(device="cuda", length=6)
    graphed.train_updates(20)  # each trainer trains right after its construction (torch.manual_seed there)
    assert graphed.graphed
    torch.cuda.set_sync_debug_mode("error")  # replays never wait for the device
    try:
        graphed.update()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", FailingCapture)
    eager = trainer(device="cuda", length=6)
    with pytest.warns(UserWarning, match="simulated capture failure"):
        eager.train_updates(21)
    assert not eager.graphed
    assert max_rel_diff(params_of(graphed), params_of(eager)) < 2e-2  # equal to bf16 precision
    a, b = run(graphed).train_updates(10), run(eager).train_updates(10)  # the same streams for both
    for k in ("loss", "nll", "entropy", "temperature"):
        assert a[k] == pytest.approx(b[k], rel=2e-2, abs=1e-3), k


def test_a_nan_in_a_replayed_block_is_found_at_its_update_without_a_sync_per_update(monkeypatch):
    monkeypatch.setattr(odt.update_graph, "CudaGraphUpdate", ReplayingGraph)
    t = trainer(cuda_graph=True)
    t.train_updates(GRAPH_WARMUP + 2)  # warmed up and captured: the next updates replay, metrics static tensors
    assert t.graphed and not t.check_each_update
    sample, calls = t._sample, []

    def nan_third(*args):  # the block's third batch has a NaN state: its update is the first to diverge
        batch = sample(*args)
        calls.append(1)
        if len(calls) == 3:
            batch.states[0, -1, 0] = np.nan
        return batch

    monkeypatch.setattr(t, "_sample", nan_third)
    before = t.num_updates
    with pytest.raises(Diverged) as err:
        t.train_updates(5)
    assert (err.value.step, err.value.quantity) == (before + 3, "loss") and t.num_updates == before + 5


def test_the_guard_sees_the_one_sync_of_a_block_of_updates():
    """The guard above can fail: train_updates reads its averages once, at the end (odt/runs.py), by design."""
    t = trainer()
    t.check_each_update = False  # as on CUDA: the per-update divergence check is the CPU's, where a read is free
    with assert_no_host_sync() as calls:
        for _ in range(2):
            t.update()
    assert calls == []
    with pytest.raises(AssertionError, match="runs.py"):
        with assert_no_host_sync():
            t.train_updates(1)
