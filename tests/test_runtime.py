"""torch.optim semantics of the generated optimizers, checked against torch.optim itself for every
spec that mirrors torch (and on both backends where it matters)."""

import copy
import io

import pytest
import torch

from harness import make_grads, make_params, rel_error
from records import ALL_RECORDS

MIRRORS = [pytest.param(r, id=r.spec) for r in ALL_RECORDS if r.torch_mirror]
BACKENDS = ["torch", "triton"]


def _config(record):
    return record.configs[-1]


def _assert_same(opt_a, params_a, opt_b, params_b, tol):
    for pa, pb in zip(params_a, params_b):
        assert rel_error(pa, pb) <= tol, f"param differs: {rel_error(pa, pb)}"
        sa, sb = opt_a.state.get(pa, {}), opt_b.state.get(pb, {})
        assert set(sa) == set(sb), f"state keys {sorted(sa)} != {sorted(sb)}"
        for key in sa:
            if key == "step":
                assert float(sa[key]) == float(sb[key])
            else:
                assert rel_error(sa[key], sb[key]) <= tol, f"state {key} differs: {rel_error(sa[key], sb[key])}"


def _pair(record, shapes=((4, 5), (7,)), dtype=torch.float64, backend="torch", config=None):
    config = _config(record) if config is None else config
    params_t = make_params(shapes, dtype)
    params_o = make_params(shapes, dtype)
    return (record.oracle(params_t, **config), params_t, record.generated(params_o, backend=backend, **config), params_o)


@pytest.mark.parametrize("record", MIRRORS)
def test_grad_none_skips_param_and_step_count(record):
    torch_opt, pt, ours, po = _pair(record)
    for step in range(1, 6):
        grads = make_grads(pt, step)
        for i, (a, b, g) in enumerate(zip(pt, po, grads)):
            # param 1 has no grad on steps 2 and 3 (frozen), then trains again (unfrozen).
            frozen = i == 1 and step in (2, 3)
            a.grad = None if frozen else g.clone()
            b.grad = None if frozen else g.clone()
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))
    if "step" in torch_opt.state[pt[1]]:  # torch.optim.SGD keeps no step count (key sets match above)
        assert float(ours.state[po[1]]["step"]) == 3


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("record", MIRRORS)
def test_non_contiguous_zero_size_and_0d_params(record, backend):
    dtype = torch.float64 if backend == "torch" else torch.float32
    tol = record.bound(dtype)
    base_t = make_params(((6, 8), (), (0, 3)), dtype)
    base_o = make_params(((6, 8), (), (0, 3)), dtype)
    # A transposed leaf is non-contiguous.
    pt = [base_t[0].detach().t().requires_grad_(), base_t[1], base_t[2]]
    po = [base_o[0].detach().t().requires_grad_(), base_o[1], base_o[2]]
    assert not po[0].is_contiguous()
    empty = torch.zeros(0, 3, dtype=dtype, requires_grad=True)
    empty.grad = torch.zeros(0, 3, dtype=dtype)
    try:
        record.oracle([empty], **_config(record)).step()
    except ZeroDivisionError:
        # torch.optim.Adafactor divides by numel() ** 0.5 in Python. Ours still steps the empty
        # tensor (a no-op), next to the others, which are compared with torch's.
        pt = pt[:2]
    torch_opt = record.oracle(pt, **_config(record))
    ours = record.generated(po, backend=backend, **_config(record))
    for step in range(1, 4):
        for a, b, g in zip(po, pt + [None], make_grads(po, step)):
            a.grad = g.clone()
            if b is not None:
                b.grad = g.clone()
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po[:len(pt)], tol)
    assert po[2].shape == (0, 3) and float(ours.state[po[2]].get("step", 3)) == 3  # SGD counts no steps


@pytest.mark.parametrize("record", MIRRORS)
def test_param_groups_with_different_hyperparameters(record):
    config = _config(record)
    pt, po = make_params(((3, 4), (5,)), torch.float64), make_params(((3, 4), (5,)), torch.float64)
    lr = config.get("lr", record.generated([torch.zeros(1, requires_grad=True)]).defaults["lr"])
    torch_opt = record.oracle([{"params": [pt[0]]}, {"params": [pt[1]], "lr": lr * 3}], **config)
    ours = record.generated([{"params": [po[0]]}, {"params": [po[1]], "lr": lr * 3}], backend="torch", **config)
    for step in range(1, 5):
        for a, b, g in zip(pt, po, make_grads(pt, step)):
            a.grad, b.grad = g.clone(), g.clone()
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))


@pytest.mark.parametrize("record", MIRRORS)
def test_lr_scheduler_and_tensor_lr(record):
    config = dict(_config(record))
    torch_opt, pt, ours, po = _pair(record, config=config)
    sched_t = torch.optim.lr_scheduler.StepLR(torch_opt, step_size=2, gamma=0.5)
    sched_o = torch.optim.lr_scheduler.StepLR(ours, step_size=2, gamma=0.5)
    for step in range(1, 7):
        for a, b, g in zip(pt, po, make_grads(pt, step)):
            a.grad, b.grad = g.clone(), g.clone()
        torch_opt.step()
        ours.step()
        sched_t.step()
        sched_o.step()
        _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))
    # A tensor lr behaves like the same float.
    lr = float(ours.param_groups[0]["lr"])
    ours.param_groups[0]["lr"] = torch.tensor(lr, dtype=torch.float64)
    for a, b, g in zip(pt, po, make_grads(pt, 99)):
        a.grad, b.grad = g.clone(), g.clone()
    torch_opt.step()
    ours.step()
    _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))


@pytest.mark.parametrize("record", MIRRORS)
def test_state_dict_round_trip_continues_identically(record):
    config = _config(record)
    p1 = make_params(((4, 3), (6,)), torch.float64)
    opt1 = record.generated(p1, backend="torch", **config)
    for step in range(1, 4):
        for p, g in zip(p1, make_grads(p1, step)):
            p.grad = g
        opt1.step()
    buffer = io.BytesIO()
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    p2 = [p.detach().clone().requires_grad_() for p in p1]
    opt2 = record.generated(p2, backend="torch", **config)
    opt2.load_state_dict(saved)
    for step in range(4, 8):
        grads = make_grads(p1, step)
        for a, b, g in zip(p1, p2, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt1.step()
        opt2.step()
        for a, b in zip(p1, p2):
            assert torch.equal(a, b), "resume is not bit-exact"
            for key in opt1.state[a]:
                assert torch.equal(opt1.state[a][key], opt2.state[b][key]), key


@pytest.mark.parametrize("record", MIRRORS)
def test_complex_params_match_torch(record):
    config = _config(record)
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(5, 4, dtype=torch.complex128, generator=gen)
    pt, po = [base.clone().requires_grad_()], [base.clone().requires_grad_()]
    try:
        torch_opt = record.oracle(pt, **config)
        pt[0].grad = torch.ones_like(base)
        torch_opt.step()
    except (RuntimeError, NotImplementedError):
        pytest.skip("torch.optim itself rejects complex params for this optimizer")
    pt = [base.clone().requires_grad_()]
    torch_opt = record.oracle(pt, **config)
    ours = record.generated(po, backend="torch", **config)
    for step in range(1, 4):
        g = torch.randn(5, 4, dtype=torch.complex128, generator=gen)
        pt[0].grad, po[0].grad = g.clone(), g.clone()
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))


@pytest.mark.parametrize("record", [pytest.param(r, id=r.spec) for r in ALL_RECORDS])
def test_api_contract(record):
    cls = record.generated
    params = make_params(((3,),), torch.float32)
    opt = cls(params)
    # closure: evaluated with grad enabled, its loss returned.
    def closure():
        opt.zero_grad()
        loss = (params[0] ** 2).sum()
        loss.backward()
        return loss
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    opt.zero_grad()
    assert params[0].grad is None
    # bad constructor arguments name the argument
    with pytest.raises(ValueError, match="backend"):
        cls(params, backend="cuda")
    if "lr" in cls([torch.zeros(1, requires_grad=True)]).defaults:
        with pytest.raises(ValueError, match="lr"):
            cls(params, lr=-1.0)
        with pytest.raises(ValueError, match="lr"):
            cls(params, lr="fast")
        with pytest.raises(ValueError, match="lr"):
            opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -1.0})
        assert len(opt.param_groups) == 1
    # sparse gradients are refused with a clear error
    sparse_param = torch.zeros(4, requires_grad=True)
    sparse_opt = cls([sparse_param])
    sparse_param.grad = torch.zeros(4).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        sparse_opt.step()
    # deepcopy and repr
    clone = copy.deepcopy(opt)
    assert repr(clone).startswith(cls.__name__)


@pytest.mark.parametrize("record", MIRRORS)
def test_large_tensors_use_the_chunked_reference_path(record):
    # Above CPU_CHUNK elements the reference runs chunk by chunk; it must equal torch.optim.
    module = __import__(f"generated.{record.spec}", fromlist=["CPU_CHUNK"])
    shapes = ((3, module.CPU_CHUNK // 2 + 7), (module.CPU_CHUNK + 1,))
    torch_opt, pt, ours, po = _pair(record, shapes=shapes)
    for step in range(1, 4):
        for a, b, g in zip(pt, po, make_grads(pt, step)):
            a.grad, b.grad = g.clone(), g.clone()
        torch_opt.step()
        ours.step()
        _assert_same(torch_opt, pt, ours, po, record.bound(torch.float64))
