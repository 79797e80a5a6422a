"""Where stages read and write, relative to the repository root (the DVC outputs and the resumable work)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dataset(root: Path, task: str) -> Path:
    """data/<task>/<task>.hdf5, written by the fetch stage."""
    return Path(root) / "data" / task / f"{task}.hdf5"


def dataset_meta(root: Path, task: str) -> Path:
    """data/<task>/<task>.json beside it: provenance, returns, the observation dims the env pins (Ant)."""
    return dataset(root, task).with_suffix(".json")


def pretrain_dir(root: Path, task: str) -> Path:
    return Path(root) / "runs" / task / "pretrain"


def finetune_dir(root: Path, task: str) -> Path:
    return Path(root) / "runs" / task / "finetune"


def work_root(root: Path, task: str) -> Path:
    """Resumable state; not a DVC output, so a rerun of the stage finds it after DVC cleans the outputs."""
    return Path(root) / ".cache" / "work" / task
