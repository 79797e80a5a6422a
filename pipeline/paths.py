"""Where stages read and write, relative to the repository root (the DVC outputs and the resumable work)."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dataset(root: Path, task: str) -> Path:
    """data/<task>/<task>.hdf5, written by the fetch stage."""
    return Path(root) / "data" / task / f"{task}.hdf5"


def existing_dataset(root: Path, task: str) -> Path:
    """dataset(), or FileNotFoundError (bad input: exit 2) naming the stage that writes it."""
    path = dataset(root, task)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist; run `dvc repro fetch@{task}` first")
    return path


def dataset_meta(root: Path, task: str) -> Path:
    """data/<task>/<task>.json beside it: provenance, returns, the observation dims the env pins (Ant)."""
    return dataset(root, task).with_suffix(".json")


def run_dir(root: Path, task: str, stage: str) -> Path:
    """runs/<task>/<stage>/: a stage's published results, seed_<k>/ for each seed (stage: pretrain, finetune, dt, ...)."""
    return Path(root) / "runs" / task / stage


def pretrained(root: Path, task: str, seed: int) -> Path:
    """The checkpoint pretraining seed k leaves, which finetuning seed k starts from."""
    return run_dir(root, task, "pretrain") / f"seed_{seed}" / "checkpoint.pt"


def work_root(root: Path, task: str) -> Path:
    """Resumable state; not a DVC output, so a rerun of the stage finds it after DVC cleans the outputs."""
    return Path(root) / ".cache" / "work" / task
