"""Datasets: D4RL HDF5 files, Minari datasets and generated D4RL-style data, all as `Trajectory` lists.

    load_d4rl_hdf5(path, task)       read a D4RL-layout file (every source ends as one)
    fetch_d4rl(url, cache_dir)       download a D4RL file into a cache (resumable, verified)
    load_minari(id_or_spec, task)    read a Minari dataset
    generate_task(task, seed=...)    medium / medium-replay data: the shipped behaviour policies rolled out,
                                     or one SAC run
    from_policies(task, out_dir, seed=...)  medium / medium-replay rolled out from behaviour policies
                                            (odt/policies/<env>)
    load_actor(package_dir, "medium")  a shipped behaviour policy (odt/policies/<env>/), checked against its manifest

Imported on first use, like `odt`'s names: `odt.datasets.download` alone needs no torch.
"""
from __future__ import annotations

from odt import lazy_exports

_WHERE = {
    "odt.datasets.behaviour": ("BehaviourActor", "load_actor", "read_manifest"),
    "odt.datasets.download": ("DownloadError", "fetch_d4rl"),
    "odt.datasets.generate": ("GenerateError", "generate_task"),
    "odt.datasets.hdf5": ("DatasetError", "ends_with_tail", "load_d4rl_hdf5", "read_metadata", "write_d4rl_hdf5"),
    "odt.datasets.minari_io": ("load_minari",),
    "odt.datasets.rollout": ("from_policies",),
}
__all__, __getattr__, __dir__ = lazy_exports(_WHERE, __name__)
