"""Settings each valid alone that cannot mean what they say together, and a misspelt task key.

Each is caught once at the edge, when params.yaml is loaded: one `error:` line naming the
keys as params.yaml spells them and how to fix it, exit 2, nothing written (fast: no
dataset, no checkpoint, no torch run).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from finetune_stage import FT_TASK as TASK

from pipeline import finetune, profile
from pipeline.params import parse_params, plan_task
from pipeline.profile import render

ROOT = Path(__file__).resolve().parents[1]


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def finetune_error(capsys, tmp_path: Path, edit, task: str = TASK) -> str:
    """The finetune stage's one `error:` line on the tiny profile edited by `edit`: exit 2, nothing written."""
    raw = yaml.safe_load(render("tiny", root=ROOT))
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SystemExit) as exit_:
        finetune.main(["--task", task, "--params", str(path), "--root", str(tmp_path)])
    assert exit_.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    return one_line(capsys.readouterr().err)


def block(raw: dict, key: str) -> dict:
    """The mapping at `key` (dotted: model, finetune, dt.model, dt.train) in TASK's block."""
    out = raw["tasks"][TASK]
    for part in key.split("."):
        out = out[part]
    return out


@pytest.mark.parametrize("model", ["model", "dt.model"])
def test_a_context_longer_than_max_ep_len_is_one_line(tmp_path, capsys, model):
    err = finetune_error(capsys, tmp_path, lambda raw: block(raw, model).update(context_len=5, max_ep_len=3))
    assert err == (
        f"error: params.yaml: tasks.{TASK}.{model}.context_len (5) is larger than tasks.{TASK}.{model}.max_ep_len "
        f"(3); lower context_len or raise max_ep_len ({TASK}'s episodes last up to 1000 steps)"
    )


@pytest.mark.parametrize("model", ["model", "dt.model"])
def test_a_max_ep_len_that_would_cut_the_tasks_episodes_is_one_line(tmp_path, capsys, model):
    err = finetune_error(capsys, tmp_path, lambda raw: block(raw, model).update(max_ep_len=500))
    assert err == (f"error: params.yaml: tasks.{TASK}.{model}.max_ep_len (500) is shorter than {TASK}'s episodes (1000 "
                   "steps), so every evaluation and exploration episode would stop at step 500; set max_ep_len to at "
                   "least 1000")


@pytest.mark.parametrize("phase, model", [("pretrain", "model"), ("finetune", "model"), ("dt.train", "dt.model")])
def test_an_evaluation_context_longer_than_the_training_context_is_one_line(tmp_path, capsys, phase, model):
    def edit(raw):
        block(raw, model)["context_len"] = 5
        block(raw, phase)["eval_context_len"] = 6

    assert finetune_error(capsys, tmp_path, edit) == (
        f"error: params.yaml: tasks.{TASK}.{phase}.eval_context_len (6) is larger than "
        f"tasks.{TASK}.{model}.context_len "
        "(5); lower eval_context_len or raise context_len (the model is never trained on a longer context)"
    )


def test_more_rollouts_per_round_than_the_buffer_keeps_is_one_line(tmp_path, capsys):
    err = finetune_error(
        capsys, tmp_path, lambda raw: block(raw, "finetune").update(buffer_size=2, rollouts_per_round=3)
    )
    assert err == (f"error: params.yaml: tasks.{TASK}.finetune.rollouts_per_round (3) is larger than "
                   f"tasks.{TASK}.finetune.buffer_size (2); raise buffer_size or lower rollouts_per_round (the buffer "
                   "keeps the newest 2 trajectories: a round's other rollouts would never be trained on)")


def test_equal_lengths_are_accepted():
    raw = yaml.safe_load(render("tiny", root=ROOT))
    block(raw, "model").update(context_len=5, max_ep_len=1000)
    block(raw, "finetune").update(eval_context_len=5, buffer_size=2, rollouts_per_round=2)
    plan = plan_task(parse_params(raw), TASK)
    assert (plan.model.context_len, plan.finetune.eval_context_len, plan.finetune.rollouts_per_round) == (5, 5, 2)


def test_a_misspelt_task_key_is_named_with_the_task_meant_before_what_it_breaks(tmp_path, capsys):
    def misspell(raw):
        raw["tasks"] = {("hoper-medium-v2" if name == TASK else name): b for name, b in raw["tasks"].items()}

    # the stage of a task spelt right stops too: the whole file is checked
    err = finetune_error(capsys, tmp_path, misspell, task="hopper-medium-replay-v2")
    assert err == (f"error: invalid {tmp_path / 'params.yaml'}: tasks.hoper-medium-v2: unknown task 'hoper-medium-v2'; "
                   # not "baselines.dt lists"
                   "did you mean hopper-medium-v2, hopper-medium-replay-v2, walker2d-medium-v2?")


def test_a_misspelt_task_in_a_profile_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "profiles").mkdir()
    text = (ROOT / "profiles" / "tiny.yaml").read_text()
    assert f"tasks: [{TASK}," in text
    (tmp_path / "profiles" / "typo.yaml").write_text(text.replace(f"tasks: [{TASK},", "tasks: [hoper-medium-v2,"))
    out = tmp_path / "params.yaml"
    assert profile.main(["typo", "--root", str(tmp_path), "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err) == (
        "error: profiles/typo.yaml: tasks: unknown task 'hoper-medium-v2'; did you mean hopper-medium-v2, "
        "hopper-medium-replay-v2, walker2d-medium-v2?")
    assert not out.exists()
