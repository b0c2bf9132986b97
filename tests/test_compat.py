"""Compatibility matrix with the torch.optim ecosystem, beyond test_runtime.py (StepLR, tensor lr,
grad None, single-file resume) and test_torch_checkpoints.py (single-group checkpoints crossing
both ways, every config):

- LR schedulers (OneCycleLR with momentum cycling, CosineAnnealingLR, ReduceLROnPlateau, LambdaLR,
  SequentialLR, ChainedScheduler) drive a generated mirror exactly as they drive torch.optim;
- checkpoints with several param groups and a param that has no gradient yet at save time cross
  between torch.optim and the generated class in both directions;
- copy.deepcopy mid-run, repr, state_dict determinism and its param_group keys against torch's;
- for every record (mirrors and paper specs): zero_grad(set_to_none=False) then zero-gradient
  steps, add_param_group mid-run on both backends, step pre/post hooks.

Mirrors run in float64 against torch.optim at a relative tolerance of 1e-10 on params and every
state after every step."""

import copy
import io
import pickle

import pytest
import torch
from torch.optim import lr_scheduler

from harness import make_grads, make_params, rel_error
from records import ALL_RECORDS

MIRRORS = [pytest.param(r, id=r.spec) for r in ALL_RECORDS if r.torch_mirror]
RECORDS = [pytest.param(r, id=r.spec) for r in ALL_RECORDS]
# Tests that call a bare step() need a rule that does not read the loss; tests that split params
# over several oracle instances need one whose step of a param does not depend on the others.
# Loss-reading and global-reduction rules are checked with the loss and all params together in
# test_oracles / test_triton instead.
NO_LOSS = [pytest.param(r, id=r.spec) for r in ALL_RECORDS if r.loss_fn is None]
PER_PARAM = [pytest.param(r, id=r.spec) for r in ALL_RECORDS if r.loss_fn is None and not r.global_reduction]
BACKENDS = ["torch", "triton"]
TOL = 1e-10
SHAPES = ((3, 4), (5,), ())

# param_group keys torch.optim (2.x) keeps and the generated mirrors do not: implementation
# switches with no effect on the update rule the spec describes.
#   Adam, AdamW:               capturable, decoupled_weight_decay, differentiable, foreach, fused
#   SGD, Adagrad:              differentiable, foreach, fused
#   RMSprop, Adamax, Adadelta, RAdam: capturable, differentiable, foreach
# (torch.optim.Adam's decoupled_weight_decay=True is AdamW; ours is the separate AdamW spec.)
# Ours keep no key torch lacks.
TORCH_ONLY_KEYS = {"capturable", "decoupled_weight_decay", "differentiable", "foreach", "fused"}


def _config(record):
    return dict(record.configs[-1])


def _oracle_kwargs(record, config):
    return record.oracle_kwargs(config) if record.oracle_kwargs else config


def _default(record, name):
    return record.generated([torch.zeros(1, requires_grad=True)]).defaults[name]


def _groups(record, params, config):
    """Two param groups: the second with three times the lr (and no weight decay, where the
    optimizer has it)."""
    lr = config.get("lr", _default(record, "lr"))
    second = {"params": params[1:], "lr": lr * 3}
    if "weight_decay" in record.generated([torch.zeros(1, requires_grad=True)]).defaults:
        second["weight_decay"] = 0.0
    return [{"params": params[:1]}, second]


def _set_grads(grads, *param_lists):
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = None if g is None else g.clone()



def _assert_same(opt_a, params_a, opt_b, params_b, where, tol=TOL, state_map=None):
    """Params and every state equal within `tol` (state_map: a's state name -> b's; default: the
    same names, and the key sets must then match exactly)."""
    for i, (pa, pb) in enumerate(zip(params_a, params_b)):
        err = rel_error(pa, pb)
        assert err <= tol, f"{where}: param {i} differs by {err}"
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        if state_map is None:
            assert set(sa) == set(sb), f"{where}: param {i} state keys {sorted(sa)} != {sorted(sb)}"
            pairs = [(key, key) for key in sa]
        else:
            pairs = []
            for ours, theirs in state_map.items():
                if (ours in sa) != (theirs in sb):
                    raise AssertionError(f"{where}: param {i} state {ours!r}/{theirs!r} present on one side only")
                if ours in sa:
                    pairs.append((ours, theirs))
        for ka, kb in pairs:
            if ka == "step":
                assert float(sa[ka]) == float(sb[kb]), f"{where}: param {i} step {float(sa[ka])} != {float(sb[kb])}"
            else:
                err = rel_error(sa[ka], sb[kb])
                assert err <= tol, f"{where}: param {i} state {ka!r} differs by {err}"


def _assert_groups_match_torch(ours, theirs, where):
    """Every param_group value ours keeps (lr, betas/momentum and whatever a scheduler added, such
    as initial_lr or max_momentum) equals torch's exactly; torch's extra keys are only the
    implementation switches."""
    assert len(ours.param_groups) == len(theirs.param_groups)
    for i, (go, gt) in enumerate(zip(ours.param_groups, theirs.param_groups)):
        extra = set(go) - set(gt)
        assert not extra, f"{where}: group {i} has keys torch lacks: {sorted(extra)}"
        missing = set(gt) - set(go) - TORCH_ONLY_KEYS
        assert not missing, f"{where}: group {i} lacks torch's keys {sorted(missing)}"
        for key in go:
            if key != "params":
                assert go[key] == gt[key], f"{where}: group {i} {key}: ours {go[key]!r}, torch {gt[key]!r}"


# ---------------------------------------------------------------------------------------------
# 1. LR schedulers


def _cycles_momentum(defaults):
    return "betas" in defaults or "momentum" in defaults


def _one_cycle(opt):
    # torch cycles betas[0] (Adam-like) or momentum (SGD, RMSprop); it refuses cycle_momentum for
    # optimizers with neither.
    max_lr = [group["lr"] * 10 for group in opt.param_groups]
    return lr_scheduler.OneCycleLR(
        opt, max_lr=max_lr, total_steps=8, pct_start=0.375, cycle_momentum=_cycles_momentum(opt.defaults),
        base_momentum=0.8, max_momentum=0.9,
    )


def _sequential(opt):
    return lr_scheduler.SequentialLR(
        opt,
        [lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3), lr_scheduler.CosineAnnealingLR(opt, T_max=4)],
        milestones=[3],
    )


def _chained(opt):
    return lr_scheduler.ChainedScheduler(
        [lr_scheduler.ExponentialLR(opt, gamma=0.8), lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)]
    )


SCHEDULERS = {
    "OneCycleLR": _one_cycle,
    "CosineAnnealingLR": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=5, eta_min=1e-4),
    "ReduceLROnPlateau": lambda opt: lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.5, patience=1, threshold=0.0),
    "LambdaLR": lambda opt: lr_scheduler.LambdaLR(opt, [lambda e: 1.0 / (1 + e), lambda e: 0.9**e]),
    "SequentialLR": _sequential,
    "ChainedScheduler": _chained,
}
# ReduceLROnPlateau: the metric improves twice then stalls, so with patience 1 the lr halves at
# steps 5 and 7.
PLATEAU_METRICS = [1.0, 0.8, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]


def _scheduler_config(record):
    config = _config(record)
    defaults = record.generated([torch.zeros(1, requires_grad=True)]).defaults
    if "momentum" in defaults and not config.get("momentum"):
        config["momentum"] = 0.9  # momentum cycling needs momentum > 0 (SGD, RMSprop)
    return config


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("record", MIRRORS)
def test_lr_schedulers_drive_both_identically(record, name):
    config = _scheduler_config(record)
    pt, po = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    torch_opt = record.oracle(_groups(record, pt, config), **config)
    ours = record.generated(_groups(record, po, config), backend="torch", **config)
    sched_t, sched_o = SCHEDULERS[name](torch_opt), SCHEDULERS[name](ours)
    _assert_groups_match_torch(ours, torch_opt, "after building the scheduler")
    initial = [(group["lr"], group.get("betas"), group.get("momentum")) for group in ours.param_groups]
    seen = set()
    for step in range(1, 9):
        _set_grads(make_grads(pt, step), pt, po)
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po, f"{name} step {step}", record.bound(torch.float64))
        if name == "ReduceLROnPlateau":
            sched_t.step(PLATEAU_METRICS[step - 1])
            sched_o.step(PLATEAU_METRICS[step - 1])
        else:
            sched_t.step()
            sched_o.step()
        _assert_groups_match_torch(ours, torch_opt, f"{name} after scheduler step {step}")
        assert sched_o.get_last_lr() == sched_t.get_last_lr()
        seen.add(tuple((group["lr"], group.get("betas"), group.get("momentum")) for group in ours.param_groups))
    # The schedule really moved the values the update reads.
    assert len(seen) > 1 and any(values != tuple(initial) for values in seen)
    if name == "ReduceLROnPlateau":
        assert [g["lr"] for g in ours.param_groups] == [lr * 0.25 for lr, _, _ in initial]
    if name == "OneCycleLR" and _cycles_momentum(ours.defaults):
        key = "betas" if "betas" in ours.defaults else "momentum"
        cycled = {(group[key][0] if key == "betas" else group[key]) for group in ours.param_groups}
        assert cycled and all(0.8 <= value <= 0.9 for value in cycled)


# torch.optim refuses cycle_momentum for optimizers with neither betas nor momentum (Adagrad, ...).
MOMENTUM_MIRRORS = [
    pytest.param(r, id=r.spec) for r in ALL_RECORDS
    if r.torch_mirror and _cycles_momentum(r.generated([torch.zeros(1, requires_grad=True)]).defaults)
]


@pytest.mark.parametrize("record", MOMENTUM_MIRRORS)
def test_one_cycle_momentum_values_are_read_by_the_update(record):
    """OneCycleLR's cycled betas[0]/momentum must reach the update: ours with the cycle matches
    torch with the cycle, and differs from torch without it."""
    config = _scheduler_config(record)
    pt, po, pn = (make_params(SHAPES, torch.float64) for _ in range(3))
    torch_opt = record.oracle(pt, **config)
    ours = record.generated(po, backend="torch", **config)
    no_cycle = record.oracle(pn, **config)
    scheds = [_one_cycle(torch_opt), _one_cycle(ours),
              lr_scheduler.OneCycleLR(no_cycle, max_lr=[g["lr"] * 10 for g in no_cycle.param_groups],
                                      total_steps=8, pct_start=0.375, cycle_momentum=False)]
    for step in range(1, 8):
        _set_grads(make_grads(pt, step), pt, po, pn)
        for opt, sched in zip((torch_opt, ours, no_cycle), scheds):
            opt.step()
            sched.step()
        _assert_same(torch_opt, pt, ours, po, f"step {step}", record.bound(torch.float64))
    assert any(rel_error(a, b) > 1e-6 for a, b in zip(po, pn)), "momentum cycling had no effect"


# ---------------------------------------------------------------------------------------------
# 2. Checkpoints with several groups and a param not yet trained, across torch.optim and ours


def _through_disk(state_dict):
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _grads_late(params, step, late_from):
    """Grads for every param, except the last one until step `late_from`."""
    grads = make_grads(params, step)
    if step < late_from:
        grads[-1] = None
    return grads


def _resume_multi_group(record, make_first, make_second):
    config = _config(record)
    shapes = ((4, 5), (), (7,), (3,))
    first_params = make_params(shapes, torch.float64)
    first = make_first(_groups(record, first_params, config), config)
    for step in range(1, 6):
        _set_grads(_grads_late(first_params, step, late_from=8), first_params)
        first.step()
    saved = first.state_dict()
    assert len(saved["param_groups"]) == 2
    # The untrained param has no state, or (torch.optim.Adagrad, which fills state eagerly) an
    # untouched one.
    assert float(saved["state"].get(3, {}).get("step", 0)) == 0
    second_params = [p.detach().clone().requires_grad_() for p in first_params]
    second = make_second(_groups(record, second_params, config), config)
    second.load_state_dict(_through_disk(saved))
    _assert_same(first, first_params, second, second_params, "right after loading", record.bound(torch.float64))
    for a, b in zip(first.param_groups, second.param_groups):
        for key in a:
            if key != "params" and key in b:
                assert a[key] == b[key], f"group {key}: {a[key]!r} != {b[key]!r}"
    for step in range(6, 12):  # the last param gets gradients from step 8 on: fresh state
        grads = _grads_late(first_params, step, late_from=8)
        _set_grads(grads, first_params, second_params)
        first.step()
        second.step()
        _assert_same(first, first_params, second, second_params, f"step {step}", record.bound(torch.float64))
    assert first.state[first_params[-1]], "the late param never trained"


@pytest.mark.parametrize("record", MIRRORS)
def test_generated_multi_group_checkpoint_loads_into_torch(record):
    _resume_multi_group(
        record,
        lambda groups, config: record.generated(groups, backend="torch", **config),
        lambda groups, config: record.oracle(groups, **config),
    )


@pytest.mark.parametrize("record", MIRRORS)
def test_torch_multi_group_checkpoint_loads_into_generated(record):
    _resume_multi_group(
        record,
        lambda groups, config: record.oracle(groups, **config),
        lambda groups, config: record.generated(groups, backend="torch", **config),
    )


# ---------------------------------------------------------------------------------------------
# 3. deepcopy, repr, state_dict


def _snapshot(opt, params):
    return [p.detach().clone() for p in params], [{k: v.clone() for k, v in opt.state[p].items()} for p in params]


def _assert_unchanged(opt, params, snapshot, where):
    values, states = snapshot
    for i, (p, value, state) in enumerate(zip(params, values, states)):
        assert torch.equal(p, value), f"{where}: param {i} changed"
        assert set(opt.state[p]) == set(state), f"{where}: param {i} state keys changed"
        for key, tensor in state.items():
            assert torch.equal(opt.state[p][key], tensor), f"{where}: param {i} state {key!r} changed"


def _params_of(opt):
    return [p for group in opt.param_groups for p in group["params"]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("record", MIRRORS)
def test_deepcopy_mid_run_is_identical_and_independent(record, backend):
    config = _config(record)
    pt, po = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    torch_opt = record.oracle(_groups(record, pt, config), **config)
    ours = record.generated(_groups(record, po, config), backend=backend, **config)
    for step in range(1, 4):
        _set_grads(make_grads(pt, step), pt, po)
        torch_opt.step()
        ours.step()
    clone = copy.deepcopy(ours)
    assert type(clone) is type(ours)
    assert clone.backend == ours.backend == backend
    assert pickle.loads(pickle.dumps(ours)).backend == backend
    # A pickle from before the backend was pickled (torch.optim's three keys only) loads as "auto".
    old = type(ours).__new__(type(ours))
    old.__setstate__(torch.optim.Optimizer.__getstate__(ours))
    assert old.backend == "auto"
    assert clone.param_groups[1]["lr"] == ours.param_groups[1]["lr"]
    pc = _params_of(clone)
    for a, b in zip(po, pc):
        assert a is not b and torch.equal(a, b)
        for key, value in ours.state[a].items():
            assert clone.state[b][key] is not value and torch.equal(clone.state[b][key], value)
    torch_clone = copy.deepcopy(torch_opt)
    ptc = _params_of(torch_clone)
    for step in range(4, 7):
        _set_grads(make_grads(pt, step), pt, po, pc, ptc)
        for opt in (torch_opt, ours, clone, torch_clone):
            opt.step()
        for a, b in zip(po, pc):
            assert torch.equal(a, b), f"step {step}: the copy diverged from the original"
            for key in ours.state[a]:
                assert torch.equal(ours.state[a][key], clone.state[b][key]), f"step {step}: state {key!r}"
        if backend == "torch":  # the Triton kernels' fp64 rounding is test_triton's business
            _assert_same(torch_opt, pt, ours, po, f"original, step {step}", record.bound(torch.float64))
            _assert_same(torch_clone, ptc, clone, pc, f"copy, step {step}", record.bound(torch.float64))
    # Stepping one leaves the other alone, both ways.
    before = _snapshot(ours, po)
    _set_grads(make_grads(pc, 50), pc)
    clone.step()
    _assert_unchanged(ours, po, before, "original after stepping the copy")
    before = _snapshot(clone, pc)
    _set_grads(make_grads(po, 51), po)
    ours.step()
    _assert_unchanged(clone, pc, before, "copy after stepping the original")


def _repr_lines(opt):
    return repr(opt).splitlines()


@pytest.mark.parametrize("record", MIRRORS)
def test_repr_matches_torch(record):
    config = _config(record)
    torch_opt = record.oracle(_groups(record, make_params(SHAPES, torch.float64), config), **config)
    ours = record.generated(_groups(record, make_params(SHAPES, torch.float64), config), backend="torch", **config)
    lines = _repr_lines(ours)
    assert lines[0] == f"{type(torch_opt).__name__} (" == f"{record.cls} ("
    assert "Parameter Group 0" in lines and "Parameter Group 1" in lines
    # torch's repr without the keys only torch keeps is ours, line for line.
    torch_only = set(torch_opt.param_groups[0]) - set(ours.param_groups[0])
    assert torch_only <= TORCH_ONLY_KEYS
    expected = [line for line in _repr_lines(torch_opt) if line.strip().split(":")[0] not in torch_only]
    assert lines == expected
    for key, value in ours.param_groups[1].items():
        if key != "params":
            assert f"    {key}: {value}" in lines


@pytest.mark.parametrize("record", MIRRORS)
def test_state_dict_is_deterministic_and_keys_match_torch(record):
    config = _config(record)
    pt, po = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    torch_opt = record.oracle(_groups(record, pt, config), **config)
    ours = record.generated(_groups(record, po, config), backend="torch", **config)
    for step in range(1, 4):
        _set_grads(make_grads(pt, step), pt, po)
        torch_opt.step()
        ours.step()
    first, second = ours.state_dict(), ours.state_dict()
    assert first["param_groups"] == second["param_groups"]
    assert list(first["state"]) == list(second["state"])
    for index, values in first["state"].items():
        assert list(values) == list(second["state"][index])
        for key, value in values.items():
            assert torch.equal(value, second["state"][index][key]), (index, key)
    theirs = torch_opt.state_dict()
    assert set(first) == set(theirs) == {"state", "param_groups"}
    assert list(first["state"]) == list(theirs["state"])
    for index, values in first["state"].items():
        assert set(values) == set(theirs["state"][index]), index
    for go, gt in zip(first["param_groups"], theirs["param_groups"]):
        assert set(go) <= set(gt), f"keys torch lacks: {sorted(set(go) - set(gt))}"
        assert set(gt) - set(go) <= TORCH_ONLY_KEYS, f"missing: {sorted(set(gt) - set(go) - TORCH_ONLY_KEYS)}"
        assert {k: v for k, v in gt.items() if k in go} == go


# ---------------------------------------------------------------------------------------------
# 4. Every record: zero grads, add_param_group, hooks


@pytest.mark.parametrize("record", NO_LOSS)
def test_zero_grad_set_to_none_false_then_zero_grad_steps(record):
    if record.oracle is None:
        pytest.skip("no oracle")
    tol = record.bound(torch.float64)
    for index, config in enumerate(record.configs):
        pt, po = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
        oracle = record.oracle(pt, **_oracle_kwargs(record, config))
        ours = record.generated(po, backend="torch", **config)
        for step in range(1, 7):
            if step <= 3:
                _set_grads(make_grads(pt, step), pt, po)
            else:  # zeroed in place: the grads stay tensors, all zero
                oracle.zero_grad(set_to_none=False)
                ours.zero_grad(set_to_none=False)
                assert all(p.grad is not None and not p.grad.any() for p in po)
            oracle.step()
            ours.step()
            _assert_same(ours, po, oracle, pt, f"config {index} step {step}", tol, record.state_map or {})


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("record", PER_PARAM)
def test_add_param_group_mid_run(record, backend):
    """Three steps on one group, then add_param_group (own lr) and three more steps on both.

    The reference: for torch mirrors, torch.optim doing the same add_param_group; for the paper
    specs, one oracle on the old params for all six steps and a fresh one on the new params for
    the last three (pytorch_optimizer's AdaBound caches per-group base lrs at construction and
    cannot take a group later; the rules are per-parameter, so the split is the same run).
    Besides, the new group's params and state equal those of a fresh generated optimizer given
    only them."""
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = record.bound(dtype)
    config = _config(record)
    oracle_config = _oracle_kwargs(record, config)
    lr = config.get("lr", _default(record, "lr")) * 2
    old_o, old_t = make_params(((4, 5), ()), dtype), make_params(((4, 5), ()), dtype)
    new_o, new_t, new_f = (make_params(((6,), (2, 3)), dtype, seed=1) for _ in range(3))
    state_map = record.state_map or {}
    ours = record.generated(old_o, backend=backend, **config)
    oracle_old = record.oracle(old_t, **oracle_config)
    for step in range(1, 4):
        _set_grads(make_grads(old_o, step), old_o, old_t)
        ours.step()
        oracle_old.step()
    ours.add_param_group({"params": new_o, "lr": lr})
    if record.torch_mirror:
        oracle_old.add_param_group({"params": new_t, "lr": lr})
        oracle_new = oracle_old
    else:
        group = {"params": new_t, "lr": lr}
        oracle_new = record.oracle([record.oracle_group(group, config) if record.oracle_group else group],
                                   **oracle_config)
    assert len(ours.param_groups) == 2 and ours.param_groups[1]["lr"] == lr
    for key, value in ours.defaults.items():
        if key != "lr":
            assert ours.param_groups[1][key] == value, key
    assert all(not ours.state.get(p) for p in new_o)
    # A fresh optimizer that only ever saw the new params, with the new group's settings.
    fresh = record.generated([{"params": new_f, "lr": lr}], backend=backend, **config)
    for step in range(4, 7):
        _set_grads(make_grads(old_o, step), old_o, old_t)
        _set_grads(make_grads(new_o, step, seed=1), new_o, new_t, new_f)
        ours.step()
        fresh.step()
        oracle_old.step()
        if oracle_new is not oracle_old:
            oracle_new.step()
        where = f"{backend} step {step}"
        _assert_same(ours, old_o, oracle_old, old_t, f"{where}, old group", tol, state_map)
        _assert_same(ours, new_o, oracle_new, new_t, f"{where}, new group", tol, state_map)
        for i, (a, b) in enumerate(zip(new_o, new_f)):
            assert torch.equal(a, b), f"step {step}: new param {i} differs from a fresh optimizer's"
            assert set(ours.state[a]) == set(fresh.state[b])
            for key in ours.state[a]:
                assert torch.equal(ours.state[a][key], fresh.state[b][key]), f"step {step}: new param {i} {key!r}"
    for params, count in ((new_o, 3), (old_o, 6)):
        for p in params:
            if "step" in ours.state[p]:
                assert float(ours.state[p]["step"]) == count


@pytest.mark.parametrize("record", NO_LOSS)
def test_step_hooks_called_once_per_step(record):
    params = make_params(SHAPES, torch.float64)
    opt = record.generated(params, backend="torch", **_config(record))
    calls = []

    def pre(optimizer, args, kwargs):
        assert optimizer is opt
        calls.append(("pre", params[0].detach().clone()))

    def post(optimizer, args, kwargs):
        assert optimizer is opt
        calls.append(("post", params[0].detach().clone()))

    handles = [opt.register_step_pre_hook(pre), opt.register_step_post_hook(post)]
    for step in range(1, 4):
        _set_grads(make_grads(params, step), params)
        if step == 3:
            def closure():
                return torch.tensor(1.0)

            assert opt.step(closure) is not None
        else:
            opt.step()
        assert [kind for kind, _ in calls] == ["pre", "post"] * step
        # pre runs before the update, post after it
        assert not torch.equal(calls[-2][1], calls[-1][1])
        assert torch.equal(calls[-1][1], params[0].detach())
    for handle in handles:
        handle.remove()
    _set_grads(make_grads(params, 4), params)
    opt.step()
    assert len(calls) == 6, "removed hooks still ran"
