"""The D4RL downloader against a loopback HTTP server: resume, verification, cache reuse, clear failures."""
from __future__ import annotations

import hashlib
import json
import socket

import numpy as np
import pytest
from loopback import serve

from odt.data import Trajectory
from odt.datasets.download import DownloadError, fetch_d4rl
from odt.datasets.hdf5 import load_d4rl_hdf5, write_d4rl_hdf5

NAME = "/offline_rl/gym_mujoco_v2/hopper_medium-v2.hdf5"


@pytest.fixture(scope="module")
def d4rl_bytes(tmp_path_factory) -> bytes:
    """A D4RL-layout hopper file of ~0.5 MB (random numbers: nothing compresses)."""
    rng = np.random.default_rng(0)
    trajectories = []
    for n in (900, 1000, 700):
        terminals = np.zeros(n, dtype=bool)
        terminals[-1] = n < 1000
        trajectories.append(
            Trajectory(rng.normal(size=(n, 11)), rng.uniform(-1, 1, (n, 3)), rng.normal(size=n), terminals)
        )
    path = write_d4rl_hdf5(tmp_path_factory.mktemp("src") / "hopper.hdf5", trajectories)
    return path.read_bytes()


def test_download_then_reuse_cache(tmp_path, d4rl_bytes):
    with serve({NAME: d4rl_bytes}) as (base, server):
        path = fetch_d4rl(base + NAME, tmp_path, progress=False)
        assert path == tmp_path / "hopper_medium-v2.hdf5"
        assert path.read_bytes() == d4rl_bytes
        side = json.loads((tmp_path / "hopper_medium-v2.hdf5.json").read_text())
        assert side["size"] == len(d4rl_bytes)
        assert side["sha256"] == hashlib.sha256(d4rl_bytes).hexdigest()
        assert not (tmp_path / "hopper_medium-v2.hdf5.part").exists()
        n_requests = len(server.requests)
        assert fetch_d4rl(base + NAME, tmp_path, progress=False) == path
        assert len(server.requests) == n_requests  # reused, not downloaded again
    assert [len(t) for t in load_d4rl_hdf5(path, "hopper-medium-v2")] == [900, 1000, 700]


def test_dropped_connection_resumes_with_range(tmp_path, d4rl_bytes):
    with serve({NAME: d4rl_bytes}, drops={NAME: 2}) as (base, server):
        path = fetch_d4rl(base + NAME, tmp_path, progress=False)
        ranges = [r for _, r in server.requests]
    assert path.read_bytes() == d4rl_bytes  # byte for byte
    assert ranges[0] is None
    half = len(d4rl_bytes) // 2
    assert ranges[1] == f"bytes={half}-"  # continued where the first transfer broke off
    assert ranges[2] == f"bytes={half + (len(d4rl_bytes) - half) // 2}-"
    assert len(ranges) == 3


def test_server_without_range_support_restarts_cleanly(tmp_path, d4rl_bytes):
    with serve({NAME: d4rl_bytes}, drops={NAME: 1}, ranges=False) as (base, _):
        path = fetch_d4rl(base + NAME, tmp_path, progress=False)
    assert path.read_bytes() == d4rl_bytes


def test_interrupted_part_file_is_resumed_by_a_later_run(tmp_path, d4rl_bytes):
    (tmp_path / "hopper_medium-v2.hdf5.part").write_bytes(d4rl_bytes[:1000])
    with serve({NAME: d4rl_bytes}) as (base, server):
        path = fetch_d4rl(base + NAME, tmp_path, progress=False)
        assert server.requests == [(NAME, "bytes=1000-")]
    assert path.read_bytes() == d4rl_bytes


def test_wrong_sha256_is_rejected_and_nothing_cached(tmp_path, d4rl_bytes):
    corrupted = bytearray(d4rl_bytes)
    corrupted[len(corrupted) // 3] ^= 0xFF
    with serve({NAME: bytes(corrupted)}) as (base, _):
        with pytest.raises(DownloadError, match="sha256 .* does not match"):
            fetch_d4rl(base + NAME, tmp_path, sha256=hashlib.sha256(d4rl_bytes).hexdigest(), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == []


def test_damaged_cached_file_is_downloaded_again(tmp_path, d4rl_bytes):
    with serve({NAME: d4rl_bytes}) as (base, server):
        path = fetch_d4rl(base + NAME, tmp_path, progress=False)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF  # same size, different bytes
        path.write_bytes(bytes(data))
        fetch_d4rl(base + NAME, tmp_path, progress=False)
        assert len(server.requests) == 2
    assert path.read_bytes() == d4rl_bytes


def test_connection_that_always_drops_gives_up(tmp_path, d4rl_bytes):
    with serve({NAME: d4rl_bytes}, drops={NAME: 1000}, drop_fraction=0.0) as (base, server):
        with pytest.raises(DownloadError, match="keeps dropping"):
            fetch_d4rl(base + NAME, tmp_path, progress=False)
        assert len(server.requests) <= 4  # bounded
    assert not (tmp_path / "hopper_medium-v2.hdf5").exists()


def test_missing_file_names_the_url(tmp_path):
    with serve({}) as (base, _):
        with pytest.raises(DownloadError) as err:
            fetch_d4rl(base + NAME, tmp_path, progress=False)
    assert f"cannot download {base + NAME} (HTTP 404" in str(err.value)


def test_unreachable_host_says_which_url_and_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}{NAME}"
    with pytest.raises(DownloadError) as err:
        fetch_d4rl(url, tmp_path, progress=False, timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert url in message and "--source file --path" in message and "--source generate" in message
    assert str(tmp_path / "hopper_medium-v2.hdf5") in message
