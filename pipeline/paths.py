"""Where stages read and write, relative to the repository root (the DVC outputs and the resumable work)."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline import caching  # which imports this module: caching.file_sha is looked up when called

ROOT = Path(__file__).resolve().parents[1]


def dataset(root: Path, task: str) -> Path:
    """data/<task>/<task>.hdf5, written by the fetch stage."""
    return Path(root) / "data" / task / f"{task}.hdf5"


def existing_dataset(root: Path, task: str) -> Path:
    """dataset(), checked: missing is FileNotFoundError naming the stage that writes it; different from the sha256
    its fetch recorded in dataset_meta() is DatasetError (both bad input: exit 2).

    A stage calls it once, before any seed or MLflow run. The hash is pipeline.caching's (kept per size and
    mtime in the process), which the stage's result key needs anyway. A file with no .json beside it, or
    a .json without `sha256`, was not put there by the fetch stage: there is nothing to check it against.
    """
    path = dataset(root, task)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist; run `dvc repro fetch@{task}` first")
    meta = dataset_meta(root, task)
    if meta.is_file():
        from odt.datasets.hdf5 import DatasetError

        restore = f"restore it with `dvc checkout fetch@{task}` or `dvc repro -f fetch@{task}`"
        try:
            recorded = json.loads(meta.read_text()).get("sha256")
        except (ValueError, AttributeError):  # not JSON, or not an object
            raise DatasetError(f"{meta} is not the JSON its fetch wrote; {restore}") from None
        if recorded is not None and recorded != caching.file_sha(path):
            raise DatasetError(f"{path} does not match the sha256 its fetch recorded in {meta}; {restore}")
    return path


def dataset_meta(root: Path, task: str) -> Path:
    """data/<task>/<task>.json beside it: provenance, returns, the observation dims the env pins (Ant)."""
    return dataset(root, task).with_suffix(".json")


def run_dir(root: Path, task: str, stage: str) -> Path:
    """runs/<task>/<stage>/: a stage's published results, seed_<k>/ for each seed (stage: pretrain, finetune, dt,
    ...)."""
    return Path(root) / "runs" / task / stage


def pretrained(root: Path, task: str, seed: int, where: Path | None = None) -> Path:
    """The checkpoint pretraining seed k leaves, which finetuning seed k starts from: in runs/<task>/pretrain/, or in
    `where` (the work directory of an experiment's pretraining)."""
    return (where or run_dir(root, task, "pretrain")) / f"seed_{seed}" / "checkpoint.pt"


def existing_checkpoints(root: Path, task: str, seeds: int, where: Path | None = None) -> list[Path]:
    """pretrained() of seeds 0..seeds-1, checked once, before any seed or MLflow run starts: missing
    (FileNotFoundError) or damaged (CheckpointError) is one line naming it."""
    from odt.checkpoint import check_checkpoint

    checkpoints = [pretrained(root, task, s, where) for s in range(seeds)]
    missing = [c for c in checkpoints if not c.is_file()]
    if missing:
        raise FileNotFoundError(f"pretrained checkpoint {missing[0]} does not exist; "
                                f"run `dvc repro pretrain@{task}` first")
    for c in checkpoints:
        check_checkpoint(c, how=f"restore it with `dvc checkout pretrain@{task}` or `dvc repro -f pretrain@{task}`")
    return checkpoints


def work_root(root: Path, task: str) -> Path:
    """Resumable state; not a DVC output, so a rerun of the stage finds it after DVC cleans the outputs."""
    return Path(root) / ".cache" / "work" / task


def experiment_dir(root: Path, name: str) -> Path:
    """experiments/<name>/: an experiment's published results, <task>/<variant>/<phase>/ (pipeline/experiment.py);
    its summary is experiments/<name>.json."""
    return Path(root) / "experiments" / name
