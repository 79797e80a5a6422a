"""One-file checkpoints, written atomically and read back without unpickling code."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from odt.atomic import atomic_path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write atomically (odt.atomic): a reader, or a process killed mid-write, sees the old file or the new one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: tensors, numbers, strings and containers only."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (run the stage that writes it first)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}); delete it and rerun") from None
