"""Result keys: what determines a stage's result, hashed, names its work directory and its MLflow run.

A work directory is keyed by a fingerprint of everything that determines its result
(configs, input file hashes, code), so a rerun with the same inputs finds its state and
resumes, and a changed input starts afresh beside it. A finished unit leaves
`result.json` there (written last), so a rerun never recomputes it.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import odt
from odt.datasets.download import sha256_file
from pipeline import paths


@functools.lru_cache(maxsize=32)
def _file_sha(path: str, size: int, mtime_ns: int) -> str:  # size and mtime: the cache key
    return sha256_file(path)


def file_sha(path: str | Path) -> str:
    st = Path(path).stat()
    return _file_sha(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=1)
def code_sha() -> str:
    """Hash of the code that computes results: odt/ and the resolution of params into configs."""
    files = sorted(Path(odt.__file__).parent.rglob("*.py")) + [Path(__file__).with_name("params.py")]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_key(stage: str, plan, params, model, cfg, data: Path) -> dict[str, Any]:
    """Everything that determines a pretraining-shaped stage's results (its fingerprint and MLflow params), seeds left
    out."""
    return {"stage": stage, "task": plan.name, "model": dataclasses.asdict(model), "train": cfg.model_dump(),
            "env_version": params.env_version, "data_sha256": file_sha(data), "code_sha256": code_sha()}


def finetune_key(plan, params, cfg, checkpoints: list[Path], root: Path,
                 pretrained: Path | None = None) -> dict[str, Any]:
    """Same for finetuning: the pretrained checkpoints each seed starts from, by content; or, from an experiment's
    pretraining work directory (`pretrained`), by its name, which is its key's fingerprint: then the key does not
    depend on the number of seeds, and experiments with other seed counts share their seeds' work."""
    from odt.envs import dataset_fixed_obs, fixed_obs_json

    start = {"pretrained": pretrained.name} if pretrained else {"checkpoint_sha256": [file_sha(c) for c in checkpoints]}
    return {
        "stage": "finetune",
        "task": plan.name,
        "train": cfg.model_dump(),
        "offline_eval": plan.pretrain.evaluation.model_dump(),
        "fixed_obs": fixed_obs_json(dataset_fixed_obs(paths.dataset_meta(root, plan.name))),
        "env_version": params.env_version,
        **start,
        "code_sha256": code_sha(),
    }


def done(path: Path) -> dict[str, Any] | None:
    """The result a finished unit left at `path` (result.json), or None."""
    return json.loads(Path(path).read_text()) if Path(path).is_file() else None
