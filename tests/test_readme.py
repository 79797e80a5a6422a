"""The README's library example is run as pasted: it must keep working."""
import re
import runpy
from pathlib import Path

import numpy as np

from odt import load_policy

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs_as_pasted(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    script = tmp_path / "example.py"
    script.write_text(blocks[0])
    monkeypatch.chdir(tmp_path)
    ns = runpy.run_path(str(script))
    run = ns["run"]
    assert run.final["online_samples"] >= ns["finetune_cfg"].online_samples
    assert np.isfinite(run.final["eval_normalized"]) and np.isfinite(run.offline_score["eval_normalized"])
    assert [r["round"] for r in run.evaluations][:2] == [0, 5]  # scored first, then every eval_every_rounds
    assert ns["logger"].rows and ns["logger"].reports
    for name in ("pretrain.pt", "finetune.pt", "hopper-policy.pt"):  # the example's checkpoints and policy
        assert (tmp_path / name).is_file()

    model, info = load_policy(tmp_path / "hopper-policy.pt")
    assert info["task"] == "hopper-medium-v2" and info["evaluation"]["g_eval"] == 200
