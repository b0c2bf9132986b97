"""Checkpoints cross between torch.optim and the generated mirrors: a torch.optim state_dict loads
into the generated optimizer (backend="torch") and training continues exactly as torch.optim's
own would, and the other way round. Every record with torch_mirror=True, every config, float64."""

import io

import pytest
import torch

from harness import make_grads, make_params, rel_error
from records import ALL_RECORDS

SHAPES = ((4, 5), (7,), ())
STEPS = 5  # before the checkpoint, and again after it
TOL = 1e-10

CASES = [
    pytest.param(record, config, id=f"{record.spec}-{i}")
    for record in ALL_RECORDS
    if record.torch_mirror
    for i, config in enumerate(record.configs)
]


def _through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _train(opt, params, first_step, steps):
    for step in range(first_step, first_step + steps):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g.clone()
        opt.step()


def _assert_same(opt_a, params_a, opt_b, params_b, where, tol=TOL):
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        assert rel_error(pa, pb) <= tol, f"{where}: param {i} differs by {rel_error(pa, pb)}"
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"{where}: param {i} state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            if key == "step":
                assert float(sa[key]) == float(sb[key]), f"{where}: param {i} step {float(sa[key])} != {float(sb[key])}"
            else:
                err = rel_error(sa[key], sb[key])
                assert err <= tol, f"{where}: param {i} state {key!r} differs by {err}"


def _resume(make_first, make_second, tol=TOL):
    """Train `make_first` for STEPS steps, load its state_dict (through torch.save/torch.load)
    into `make_second` on identical params, then train both on: they must stay identical."""
    first_params = make_params(SHAPES, torch.float64)
    first = make_first(first_params)
    _train(first, first_params, 1, STEPS)
    second_params = [p.detach().clone().requires_grad_() for p in first_params]
    second = make_second(second_params)
    second.load_state_dict(_through_disk(first.state_dict()))
    _assert_same(first, first_params, second, second_params, "right after loading", tol)
    for step in range(STEPS + 1, 2 * STEPS + 1):
        _train(first, first_params, step, 1)
        _train(second, second_params, step, 1)
        _assert_same(first, first_params, second, second_params, f"step {step}", tol)



@pytest.mark.parametrize("record, config", CASES)
def test_torch_checkpoint_loads_into_generated(record, config):
    _resume(lambda ps: record.oracle(ps, **config), lambda ps: record.generated(ps, backend="torch", **config),
            record.bound(torch.float64))


@pytest.mark.parametrize("record, config", CASES)
def test_generated_checkpoint_loads_into_torch(record, config):
    _resume(lambda ps: record.generated(ps, backend="torch", **config), lambda ps: record.oracle(ps, **config),
            record.bound(torch.float64))


@pytest.mark.parametrize("record, config", CASES)
def test_generated_state_dict_survives_weights_only_load(record, config):
    params = make_params(SHAPES, torch.float64)
    opt = record.generated(params, backend="torch", **config)
    _train(opt, params, 1, STEPS)
    original = opt.state_dict()
    loaded = _through_disk(original)
    assert loaded["param_groups"] == original["param_groups"]
    assert set(loaded["state"]) == set(original["state"])
    for index, values in original["state"].items():
        assert set(loaded["state"][index]) == set(values)
        for key, value in values.items():
            assert loaded["state"][index][key].dtype == value.dtype
            assert torch.equal(loaded["state"][index][key], value), (index, key)
