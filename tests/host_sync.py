"""A guard for the tests of the update loop: no host sync from odt's own code while a block runs.

On a GPU each read of a tensor's value on the host waits for the device; the update loop
must not (ODTTrainer.update; train_updates reads its averages once, at the end). Without a
GPU the part of that contract visible on the CPU is checked here: odt's code never calls
item(), float(), bool(), int(), tolist(), numpy() or cpu() on a tensor. Library internals
are not checked (torch.cuda.set_sync_debug_mode covers them on CUDA: benchmarks/gpu.py).
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

import odt

ODT_DIR = str(Path(odt.__file__).resolve().parent)
SYNC_METHODS = ("item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__")


@contextlib.contextmanager
def assert_no_host_sync():
    """Fail if code under odt/ reads a tensor's value on the host while the block runs.

    On a GPU each of those calls waits for the device; library internals are not
    checked here (set_sync_debug_mode covers them on CUDA).
    """
    calls: list[str] = []
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def guard(name, original):
        def wrapper(self, *args, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if caller.startswith(ODT_DIR):
                calls.append(f"Tensor.{name} from {caller}:{sys._getframe(1).f_lineno}")
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in originals.items():
        setattr(torch.Tensor, name, guard(name, original))
    try:
        yield calls
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    if calls:
        raise AssertionError("host syncs inside the update loop: " + "; ".join(sorted(set(calls))))
