"""Datasets: D4RL HDF5 files, Minari datasets and generated D4RL-style data, all as `Trajectory` lists.

    load_d4rl_hdf5(path, task)       read a D4RL-layout file (every source ends as one)
    fetch_d4rl(url, cache_dir)       download a D4RL file into a cache (resumable, verified)
    load_minari(id_or_spec, task)    read a Minari dataset
    generate_task(task, seed=...)    medium / medium-replay data from one cached SAC run
"""
from odt.datasets.download import DownloadError, fetch_d4rl
from odt.datasets.generate import GenerateError, generate_task
from odt.datasets.hdf5 import DatasetError, ends_with_tail, load_d4rl_hdf5, read_metadata, write_d4rl_hdf5
from odt.datasets.minari_io import load_minari

__all__ = [
    "DatasetError",
    "DownloadError",
    "GenerateError",
    "ends_with_tail",
    "fetch_d4rl",
    "generate_task",
    "load_d4rl_hdf5",
    "load_minari",
    "read_metadata",
    "write_d4rl_hdf5",
]
