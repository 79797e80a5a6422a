"""How a batch reaches the trainer's update: as tensors (`to_device`), or packed for the update replayed
from one captured CUDA graph (`GraphedUpdate`).

The graph is an opt-in wrapper around the update, outside the algorithm: ODTTrainer takes it
with one line (`GraphedUpdate(self._step, ...) if self.cuda_graph else None`) and otherwise
calls its `_step` directly. The rollout graph's design (odt.evaluation.CudaGraphPolicy), for training.

Launched op by op from Python, an update of the paper's model is about 450 kernels and the
GPU waits for the host most of the step (49 updates/s on an H200, the GPU busy about 2.5 ms
of 14-18 ms). Replaying the graph launches them in one call. The batch is packed into one
float32 tensor, copied from pinned memory on a side stream while the device still computes
the update before, then into the graph's static buffer; the padded-mask path is always taken
(a mask of ones is the unpadded case). Everything else the step reads and writes lives on the
device and is used in place: parameters and gradients, LAMB's moments, step count and
learning rate (odt.optim), the warmup's step count, log lambda and its Adam state. Python
numbers (weight decay, the temperature's learning rate, base rate and warmup length, the clip
norm, beta) are baked in: the trainer calls `reset()` after a phase switch or a state load.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from odt.replay import Batch

GRAPH_WARMUP = 3  # eager updates of a new batch shape before its capture (PyTorch's recipe warms up 3)

Step = Callable[[dict[str, "torch.Tensor | None"]], dict[str, torch.Tensor]]  # a batch on the device -> metrics


@dataclass
class StagedBatch:
    """A batch in one float32 tensor (B, K, obs | act | rtg | timestep | mask), on its way to the device.

    On CUDA it was copied from pinned memory on a side stream (non-blocking): `ready` marks
    the copy's end, and `packed()` makes the stream that uses it wait for that, not the host.
    """

    tensor: torch.Tensor
    padded: bool  # decided on the host: no device sync
    ready: torch.cuda.Event | None = None

    def packed(self) -> torch.Tensor:
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.tensor.device)
            stream.wait_event(self.ready)
            self.tensor.record_stream(stream)  # allocated on the copy stream, used on this one
        return self.tensor


def to_device(batch: Batch, device: torch.device) -> dict[str, torch.Tensor | None]:
    """The eager update's batch: its arrays as tensors on `device` (on CUDA from pinned memory, non-blocking)."""
    pin = device.type == "cuda"

    def move(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(x)
        return t.pin_memory().to(device, non_blocking=True) if pin else t

    return {"states": move(batch.states), "actions": move(batch.actions), "returns_to_go": move(batch.returns_to_go),
            "timesteps": move(batch.timesteps), "mask": move(batch.mask) if batch.padded else None}


class CudaGraphUpdate:
    """`step` on a packed batch of one shape, captured once as a CUDA graph; a call copies the batch into the
    static buffer and replays. The returned metrics are static tensors, overwritten by the next replay."""

    def __init__(self, step: Callable[[torch.Tensor], dict[str, torch.Tensor]], packed: torch.Tensor):
        self.packed = packed.clone()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.metrics = step(self.packed)

    def __call__(self, packed: torch.Tensor) -> dict[str, torch.Tensor]:
        self.packed.copy_(packed)
        self.graph.replay()
        return self.metrics


class GraphedUpdate:
    """`step` fed packed batches: GRAPH_WARMUP eager updates of a batch shape (on a side stream), its capture, then
    replays; eagerly for good (one warning) if the capture fails. Off CUDA (tests) the updates run eagerly."""

    def __init__(self, step: Step, device: torch.device, state_dim: int, act_dim: int):
        self.step, self.device, self.dims = step, device, (state_dim, act_dim)
        # a stream for batch copies and one for the eager warm-up updates
        self.streams = (torch.cuda.Stream(device), torch.cuda.Stream(device)) if device.type == "cuda" else None
        self.reset()

    def reset(self) -> None:
        """Capture again (after the warm-up): the values the graph baked in have changed."""
        self.graph: CudaGraphUpdate | None = None
        self.failed = False  # the capture failed: eager until the next reset or batch shape
        self.shape: tuple[int, ...] | None = None
        self.warmups_left = GRAPH_WARMUP

    @property
    def graphed(self) -> bool:
        """Whether updates replay a captured graph (after the warm-up of the batch shape)."""
        return self.graph is not None

    def stage(self, batch: Batch) -> StagedBatch:
        """The batch packed on the host; on CUDA sent from pinned memory on the copy stream, so that the copy runs
        while the device still computes the update before."""
        B, K, o = batch.states.shape
        a = batch.actions.shape[-1]
        cuda = self.device.type == "cuda"
        host = torch.empty((B, K, o + a + 3), dtype=torch.float32, pin_memory=cuda)
        for dst, src in ((host[..., :o], batch.states), (host[..., o:o + a], batch.actions),
                         (host[..., -3], batch.returns_to_go), (host[..., -1], batch.mask),
                         (host[..., -2], batch.timesteps)):  # timesteps are exact in float32 below 2^24
            dst.copy_(torch.from_numpy(src))
        if not cuda:
            return StagedBatch(host, batch.padded)
        with torch.cuda.stream(self.streams[0]):
            packed = host.to(self.device, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record(self.streams[0])
        return StagedBatch(packed, batch.padded, ready)

    def unpack(self, packed: torch.Tensor, padded: bool) -> dict[str, torch.Tensor | None]:
        """The batch the eager update reads (`to_device`'s tensors, the same values), on the device."""
        o, a = self.dims
        return {
            "states": packed[..., :o],
            "actions": packed[..., o:o + a].contiguous(),
            "returns_to_go": packed[..., -3],
            "timesteps": packed[..., -2].long(),
            "mask": packed[..., -1].contiguous() if padded else None,
        }

    def __call__(self, staged: StagedBatch) -> dict[str, torch.Tensor]:
        """One update; from the graph, the metrics are valid until the next call."""
        packed = staged.packed()
        if tuple(packed.shape) != self.shape:  # a new shape: warm up, capture
            self.reset()
            self.shape = tuple(packed.shape)
        if self.graph is None and not self.failed and self.warmups_left == 0:
            try:
                self.graph = CudaGraphUpdate(lambda p: self.step(self.unpack(p, padded=True)), packed)
            except RuntimeError as err:  # a kernel that cannot be captured here: run eagerly, say so once
                warnings.warn(f"CUDA graph capture of the update failed ({err}); updates run eagerly", stacklevel=4)
                self.failed = True
        if self.graph is not None:
            return self.graph(packed)
        if not self.failed:
            self.warmups_left -= 1
        if self.failed or self.streams is None:  # capture failed (or a CPU): eager
            return self.step(self.unpack(packed, staged.padded))
        # a warm-up update: on a side stream, as PyTorch's capture recipe has it
        side, current = self.streams[1], torch.cuda.current_stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            packed.record_stream(side)
            metrics = self.step(self.unpack(packed, staged.padded))
        current.wait_stream(side)
        return metrics
