"""The README's library example is run as pasted: it must keep working."""
import re
import runpy
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs_as_pasted(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(script))
    history = ns["history"]
    assert history and history[-1]["online_samples"] >= ns["cfg"].online_samples
    assert np.isfinite(history[-1]["eval_return"])
    assert (tmp_path / "hopper.pt").is_file()  # the example's checkpoint
