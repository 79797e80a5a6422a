"""Rollouts: env steps per second of odt.evaluation.rollout vs the raw vector env.

Raw: the same SyncVectorEnv stepped with uniform random actions, nothing else. odt:
exploration (sampled actions) and evaluation (mean actions) rollouts, one batched
forward pass of the small model per step for all N envs. Hopper-v5 runs with
terminate_when_unhealthy=False so that every episode lasts exactly `steps` steps on
both sides: the figure is the per-step cost of inference, not of how soon an untrained
policy falls over.
"""
from __future__ import annotations

from functools import partial

import gymnasium as gym
import numpy as np
import torch

from benchmarks.common import ACT_DIM, OBS_DIM, Figure, Result, at_least, interleaved
from odt.config import EvalConfig, ModelConfig
from odt.evaluation import cuda_graph_policy, rollout
from odt.model import DecisionTransformer

TARGET = 0.70
SMALL = dict(embed_dim=128, n_layer=3, n_head=1)


def hopper_vector_env(num_envs: int, env_id: str = "Hopper-v5") -> gym.vector.SyncVectorEnv:
    return gym.vector.SyncVectorEnv([partial(gym.make, env_id, terminate_when_unhealthy=False)] * num_envs)


@torch.inference_mode()
def check_graph_matches_eager(net: DecisionTransformer, n: int, k: int) -> None:
    """The captured graph computes what the eager forward does (bf16 tolerance), padded or not."""
    net.eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(n, k, OBS_DIM, device="cuda", generator=g), torch.rand(n, k, ACT_DIM, device="cuda", generator=g),
         torch.rand(n, k, device="cuda", generator=g), torch.arange(k, device="cuda").expand(n, k))
    policy = cuda_graph_policy(net, n, k)
    assert policy is not None, "CUDA graph capture of the policy failed (see the warning)"
    for mask in (None, (torch.arange(k, device="cuda") >= k // 2).float().expand(n, k)):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want = net(*x, mask, last_only=True)
        got = policy(*x, mask)
        for w, o in zip(want, got):
            torch.testing.assert_close(o, w.float(), atol=3e-2, rtol=3e-2)


def run(
    *,
    num_envs: tuple[int, ...] = (1, 10, 50),
    steps: int = 200,
    repeats: int = 5,
    model: dict | None = None,
    context_len: int | None = None,
    env_id: str = "Hopper-v5",
    device: str = "cpu",
) -> Result:
    """`device="cuda"`: the network on the GPU (bf16 autocast, as rollout runs it there), envs on the CPU."""
    if device == "cuda" and not torch.cuda.is_available():
        return Result("rollout_gpu", "Rollouts on a GPU", skipped="no GPU found: torch.cuda.is_available() is False")
    torch.manual_seed(0)
    cfg = ModelConfig(state_dim=OBS_DIM, act_dim=ACT_DIM, context_len=20, **(model or SMALL))
    net = DecisionTransformer(cfg).to(device)  # weights do not change the cost of a step
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    K = context_len or EvalConfig().eval_context_len
    common = dict(target_return=3600.0, state_mean=np.zeros(OBS_DIM, np.float32),
                  state_std=np.ones(OBS_DIM, np.float32), context_len=K, max_steps=steps)
    figures, rows = [], []
    for N in num_envs:
        envs = hopper_vector_env(N, env_id)
        rng = np.random.default_rng(0)

        def raw() -> int:
            envs.reset(seed=list(range(N)))
            for _ in range(steps):
                envs.step(rng.uniform(-1.0, 1.0, size=(N, ACT_DIM)).astype(np.float32))
            return N * steps

        def explore() -> int:
            return int(rollout(net, envs, sample=True, seeds=list(range(N)), **common).lengths.sum())

        def evaluate() -> int:
            return int(rollout(net, envs, sample=False, seeds=list(range(N)), **common).lengths.sum())

        inputs = (torch.zeros(N, K, OBS_DIM, device=device), torch.zeros(N, K, ACT_DIM, device=device),
                  torch.zeros(N, K, device=device), torch.arange(K, device=device).expand(N, K), None)

        @torch.inference_mode()
        def forward_only() -> int:  # the network alone, as rollout calls it once per step
            net.eval()
            policy = cuda_graph_policy(net, N, K) if device == "cuda" else None
            for _ in range(steps):
                if policy is not None:
                    policy(*inputs)[0].cpu()  # rollout reads each action on the host
                else:
                    net(*inputs, last_only=True)
            sync()
            return N * steps

        sides = {"raw": raw, "explore": explore, "eval": evaluate, "forward": forward_only}
        if device == "cuda":
            check_graph_matches_eager(net, N, K)

            def evaluate_eager() -> int:  # kernels launched one by one, no CUDA graph
                return int(rollout(net, envs, sample=False, seeds=list(range(N)), cuda_graph=False,
                                   **common).lengths.sum())

            sides["eval, no CUDA graph"] = evaluate_eager
        for fn in sides.values():  # warm-up (and the graph capture)
            fn()
        t = interleaved(sides, repeats)
        sps = {k: [n / s for s, n in v] for k, v in t.items()}
        # the best any rollout can do with this network: env time plus forward time, nothing else
        ceiling = [1.0 / (1.0 + r / f) for r, f in zip(sps["raw"], sps["forward"])]
        for mode in ("explore", "eval") + (("eval, no CUDA graph",) if device == "cuda" else ()):
            ratio = [o / r for o, r in zip(sps[mode], sps["raw"])]
            batched = N > 1
            figures.append(Figure(
                f"{mode} / raw env steps per second, N={N}" + ("" if batched else " (one env: no batching)"),
                ratio, "x", f">= {TARGET:.2f}x" if batched else "",
                at_least(float(np.median(ratio)), TARGET) if batched else None,
            ))
        figures.append(Figure(f"ceiling: raw env + forward pass alone / raw, N={N}", ceiling, "x"))
        for k, v in sps.items():
            rows.append({"N": N, "side": k, "median_steps_per_s": float(np.median(v)),
                         "min": float(np.min(v)), "max": float(np.max(v))})
        envs.close()
    notes = [
        f"{env_id} (terminate_when_unhealthy=False), {steps} steps per episode, small model "
        f"(d{cfg.embed_dim} L{cfg.n_layer} H{cfg.n_head}), evaluation context K={K}, "
        f"torch threads={torch.get_num_threads()}, network on {device}"
        + (
            f" ({torch.cuda.get_device_name(0)}, bf16 autocast, forward replayed from a CUDA graph)"
            if device == "cuda"
            else ""
        )
        + "."
    ]
    if device == "cuda":
        return Result("rollout_gpu", "Rollouts on a GPU", figures, rows, notes)
    return Result("rollout", "Rollouts", figures, rows, notes)
