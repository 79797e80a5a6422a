"""odt.optim against the libraries it stands in for: pytorch-optimizer's Lamb and torch's LambdaLR."""
import copy

import pytest
import torch
from pytorch_optimizer import Lamb as LibraryLamb

from odt.optim import Lamb, LinearWarmup


class Net(torch.nn.Module):
    """Matrices, biases, a LayerNorm, and one parameter that never gets a gradient."""

    def __init__(self):
        super().__init__()
        self.fc1, self.ln, self.fc2 = torch.nn.Linear(8, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 3)
        self.unused = torch.nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return self.fc2(torch.relu(self.ln(self.fc1(x))))


def groups(model, weight_decay):
    """ODTTrainer's groups: decay on matrices, none on vectors."""
    ps = list(model.parameters())
    return [{"params": [p for p in ps if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in ps if p.dim() < 2], "weight_decay": 0.0}]


def train(model, opt, steps, *, seed, lrs, set_lr):
    gen = torch.Generator().manual_seed(seed)
    for t in range(steps):
        x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 3, generator=gen)
        set_lr(opt, lrs(t))
        opt.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def set_float(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def set_tensor(opt, lr):
    for g in opt.param_groups:
        g["lr"].fill_(lr)


def warmup_lrs(t):  # a rising then constant rate, like the trainer's warmup
    return 1e-2 * min(1.0, (t + 1) / 30)


def max_rel_diff(a, b):
    return max(
        ((p - q).abs().max() / q.abs().max().clamp_min(1e-12)).item() for p, q in zip(a.parameters(), b.parameters())
    )


def test_multi_tensor_lamb_matches_pytorch_optimizer_over_100_steps():
    torch.manual_seed(0)
    ref = Net()
    ours, start = copy.deepcopy(ref), copy.deepcopy(ref)
    train(ref, LibraryLamb(groups(ref, 0.05), lr=1e-2), 100, seed=1, lrs=warmup_lrs, set_lr=set_float)
    train(ours, Lamb(groups(ours, 0.05), lr=1e-2), 100, seed=1, lrs=warmup_lrs, set_lr=set_tensor)
    assert max_rel_diff(ours, ref) < 1e-5
    moved = max_rel_diff(start, ref)
    assert moved > 0.1  # the comparison is not of parameters that barely moved
    assert torch.equal(ours.unused, start.unused) and torch.equal(ref.unused, start.unused)  # no grad: no decay either


@pytest.mark.parametrize("change", [{"bias_correction": False}, {"weight_decay": 0.0}, {"eps": 1e-3}])
def test_the_comparison_can_fail(change):
    """Each part of the rule shows: dropping one moves the result far beyond the tolerance above."""
    torch.manual_seed(0)
    ref = Net()
    ours = copy.deepcopy(ref)
    train(ref, LibraryLamb(groups(ref, 0.05), lr=1e-2), 100, seed=1, lrs=warmup_lrs, set_lr=set_float)
    opt = Lamb(groups(ours, change.get("weight_decay", 0.05)), lr=1e-2, eps=change.get("eps", 1e-6))
    if change.get("bias_correction") is False:
        for g in opt.param_groups:
            g["step"].fill_(1e6)  # 1 - beta1^t = 1 from the first step
    train(ours, opt, 100, seed=1, lrs=warmup_lrs, set_lr=set_tensor)
    assert max_rel_diff(ours, ref) > 1e-3


def test_state_dicts_move_between_the_library_lamb_and_ours_both_ways():
    torch.manual_seed(0)
    a = Net()
    b = copy.deepcopy(a)
    lib = LibraryLamb(groups(a, 0.05), lr=1e-2)
    train(a, lib, 10, seed=1, lrs=warmup_lrs, set_lr=set_float)
    ours = Lamb(groups(b, 0.05), lr=1e-2)
    b.load_state_dict(a.state_dict())
    # library -> ours (a copy: loading aliases tensors): moments, step count and rate carried
    ours.load_state_dict(copy.deepcopy(lib.state_dict()))
    assert [float(g["step"]) for g in ours.param_groups] == [10.0, 10.0]
    assert float(ours.param_groups[0]["lr"]) == pytest.approx(warmup_lrs(9))
    assert torch.equal(ours.state[b.fc1.weight]["exp_avg"], lib.state[a.fc1.weight]["exp_avg"])
    train(a, lib, 10, seed=2, lrs=lambda t: warmup_lrs(t + 10), set_lr=set_float)
    train(b, ours, 10, seed=2, lrs=lambda t: warmup_lrs(t + 10), set_lr=set_tensor)
    assert max_rel_diff(b, a) < 1e-5

    back = LibraryLamb(groups(a, 0.05), lr=1e-2)  # ours -> library
    back.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert [g["step"] for g in back.param_groups] == [20, 20]
    a.load_state_dict(b.state_dict())
    train(a, back, 10, seed=3, lrs=lambda t: warmup_lrs(t + 20), set_lr=set_float)
    train(b, ours, 10, seed=3, lrs=lambda t: warmup_lrs(t + 20), set_lr=set_tensor)
    assert max_rel_diff(b, a) < 1e-5


def test_another_lamb_variant_is_refused():
    torch.manual_seed(0)
    a = Net()
    lib = LibraryLamb(groups(a, 0.05), lr=1e-2, rectify=True)
    with pytest.raises(ValueError, match="rectify"):
        Lamb(groups(copy.deepcopy(a), 0.05)).load_state_dict(lib.state_dict())


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_linear_warmup_gives_lambdalr_rates_and_state():
    warmup = 7
    a, b = Net(), Net()
    lib = LibraryLamb(groups(a, 0.0), lr=3e-3)
    lib_sched = torch.optim.lr_scheduler.LambdaLR(lib, lambda t: min(1.0, (t + 1) / warmup))
    ours = Lamb(groups(b, 0.0), lr=3e-3)
    sched = LinearWarmup(ours, lambda: warmup)
    assert sched.get_last_lr() == pytest.approx(lib_sched.get_last_lr())
    for _ in range(12):
        lib_sched.step()
        sched.step()
        assert sched.get_last_lr() == pytest.approx(lib_sched.get_last_lr(), rel=1e-6)
        assert float(ours.param_groups[1]["lr"]) == pytest.approx(lib.param_groups[1]["lr"], rel=1e-6)
    assert sched.last_epoch == lib_sched.last_epoch == 12
    state = sched.state_dict()
    assert state.keys() == lib_sched.state_dict().keys()
    other = torch.optim.lr_scheduler.LambdaLR(LibraryLamb(groups(Net(), 0.0), lr=3e-3), lambda t: 1.0)
    other.load_state_dict(state)
    assert other.last_epoch == 12 and other.base_lrs == lib_sched.base_lrs
    again = LinearWarmup(Lamb(groups(Net(), 0.0), lr=3e-3), lambda: warmup)
    again.load_state_dict(lib_sched.state_dict())
    again.step()
    assert again.last_epoch == 13 and again.get_last_lr() == pytest.approx([3e-3, 3e-3])
