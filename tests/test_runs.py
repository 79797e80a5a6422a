"""odt/runs.py: what every loop shares (headline score, resume check, device, metric averaging)."""
import math

import pytest
import torch

from odt.runs import Average, headline, resolve_device, resume


def test_the_headline_is_the_normalized_return_else_the_raw_one():
    assert headline({"eval_return": 10.0, "eval_normalized": 3.0}) == 3.0
    assert headline({"eval_return": 10.0}) == 10.0


def test_resume_is_none_without_a_checkpoint_file(tmp_path):
    assert resume(None) is None and resume(tmp_path / "none.pt") is None
    torch.save({"trainer": {"num_updates": 3}}, tmp_path / "c.pt")
    assert resume(tmp_path / "c.pt") == {"trainer": {"num_updates": 3}}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="torch sees no GPU"):
        resolve_device("cuda")


def block(average, rows):
    for loss, grad_norm in rows:
        average.add({"loss": torch.tensor(loss), "grad_norm": torch.tensor(grad_norm)})
    return average.pop()


def test_average_gives_the_mean_and_finds_the_first_update_at_fault():
    plain = Average()
    assert block(plain, [(1.0, 2.0), (3.0, 4.0)]) == {"loss": 2.0, "grad_norm": 3.0}
    assert plain.first_non_finite() is None and plain.pop() == {}  # nothing watched; a fresh start after a pop
    watched = Average(watch=("loss", "grad_norm"))
    assert block(watched, [(1.0, 2.0), (3.0, 4.0)]) == {"loss": 2.0, "grad_norm": 3.0}
    assert watched.first_non_finite() is None  # finite averages: the device is not read
    out = block(watched, [(1.0, 2.0), (1.0, math.inf), (math.nan, 1.0), (1.0, 1.0)])
    assert math.isinf(out["grad_norm"]) and math.isnan(out["loss"])
    after, values = watched.first_non_finite()  # the second of four: two updates came after it
    assert after == 2 and values == {"loss": 1.0, "grad_norm": math.inf}
    out = block(watched, [(3e38, 1.0), (3e38, 1.0)])  # each finite, the float32 sum overflows
    assert watched.first_non_finite() == (0, {"loss": out["loss"], "grad_norm": 1.0})
