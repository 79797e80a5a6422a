"""Datasets: D4RL HDF5 files, Minari datasets and generated D4RL-style data, all as `Trajectory` lists."""
from odt.datasets.hdf5 import DatasetError, load_d4rl_hdf5, write_d4rl_hdf5

__all__ = ["DatasetError", "load_d4rl_hdf5", "write_d4rl_hdf5"]
