import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py


@pytest.fixture(autouse=True)
def _few_threads():
    """Two cores: keep each test's torch to one thread so parallel work in a test does not thrash."""
    torch.set_num_threads(1)
    yield
