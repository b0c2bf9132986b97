"""Loss rules (specs/losses/*.opt): every shipped loss, value AND gradient, against its outside
oracle (tests/loss_records.py), the Triton kernels (interpreter) against the reference, gradcheck,
stability at logits of +-1e4, masked rows and all three reductions.

Errors are relative to the largest magnitude of the oracle's value (or gradient):
fp64 <= 1e-10, fp32 <= 1e-5."""

from __future__ import annotations

import pytest
import torch

from loss_records import LOSS_IDS, LOSSES, hypers_of, split_config

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
REDUCTIONS = ("mean", "sum", "none")
DTYPES = (torch.float64, torch.float32)
DTYPE_IDS = ("fp64", "fp32")


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(b).all(), "the oracle itself is not finite here"
    scale = b.abs().max().clamp_min(1e-300) if b.numel() else torch.tensor(1.0)
    return ((a - b).abs().max() / scale).item() if b.numel() else 0.0


def value_and_grads(fn, x, differentiable, seed=1):
    """fn(inputs) and the gradient of <fn, random weights> with respect to each differentiable input."""
    leaves = {k: (v.detach().clone().requires_grad_(k in differentiable) if v.is_floating_point() else v)
              for k, v in x.items()}
    out = fn(leaves)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    grads = torch.autograd.grad((out * weights).sum(), [leaves[k] for k in differentiable])
    return out.detach(), dict(zip(differentiable, grads))


def run_generated(info, module, x, config, reduction, backend):
    def fn(leaves):
        return getattr(module, info.functional)(**leaves, **config, reduction=reduction, backend=backend)

    return fn


def run_oracle(info, h):
    def fn(leaves):
        return info.oracle(leaves, h, reduction)

    return fn


def differentiable_inputs(module, x):
    return [name for name, role, _, diff in module._INPUTS if diff and name in x]


def cases():
    for info in LOSSES:
        for ci, config in enumerate(info.configs):
            yield pytest.param(info, config, id=f"{info.module}-{ci}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("info,config", list(cases()))
def test_reference_matches_oracle(info, config, reduction, dtype):
    """backend="torch": the readable reference forward and the SymPy gradient, vs the oracle."""
    module = info.load()
    x, config = split_config(info, config, info.make(dtype, torch.Generator().manual_seed(0), 1.0))
    h = hypers_of(info, module, config)
    diff = differentiable_inputs(module, x)
    value, grads = value_and_grads(run_generated(info, module, x, config, reduction, "torch"), x, diff)
    ref_value, ref_grads = value_and_grads(lambda l: info.oracle(l, h, reduction), x, diff)
    assert value.dtype == dtype
    assert rel_err(value, ref_value) <= TOL[dtype]
    for name in diff:
        assert rel_err(grads[name], ref_grads[name]) <= TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("info", LOSSES, ids=LOSS_IDS)
def test_autograd_through_reference_forward_matches_oracle(info, dtype):
    """The reference forward alone, differentiated by autograd (not by SymPy), vs the oracle."""
    module = info.load()
    for config in info.configs:
        x, config = split_config(info, config, info.make(dtype, torch.Generator().manual_seed(0), 1.0))
        h = hypers_of(info, module, config)
        diff = differentiable_inputs(module, x)

        def forward(leaves):
            args = [leaves.get(name) for name in module._NAMES]
            loss, mean_weight, _ = module._reference_forward(*args, h)
            return loss.sum() / (mean_weight.sum() if mean_weight is not None else loss.numel())

        value, grads = value_and_grads(forward, x, diff)
        ref_value, ref_grads = value_and_grads(lambda l: info.oracle(l, h, "mean"), x, diff)
        assert rel_err(value, ref_value) <= TOL[dtype]
        for name in diff:
            assert rel_err(grads[name], ref_grads[name]) <= TOL[dtype], name


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("info", LOSSES, ids=LOSS_IDS)
def test_triton_matches_reference(info, dtype):
    """backend="triton" (Triton's interpreter here) vs backend="torch", all reductions, each config."""
    module = info.load()
    for config in info.configs:
        x, config = split_config(info, config, info.make(dtype, torch.Generator().manual_seed(2), 1.0))
        diff = differentiable_inputs(module, x)
        for reduction in REDUCTIONS:
            value, grads = value_and_grads(run_generated(info, module, x, config, reduction, "triton"), x, diff)
            ref_value, ref_grads = value_and_grads(run_generated(info, module, x, config, reduction, "torch"), x, diff)
            assert rel_err(value, ref_value) <= TOL[dtype], (config, reduction)
            for name in diff:
                assert rel_err(grads[name], ref_grads[name]) <= TOL[dtype], (config, reduction, name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("info", LOSSES, ids=LOSS_IDS)
def test_gradcheck_fp64(info, backend):
    """torch.autograd.gradcheck on the generated Function: the SymPy gradient (reference, or the
    Triton backward kernel) against finite differences of the forward, in float64."""
    module = info.load()
    config = dict(info.configs[-1])
    x, config = split_config(info, config, info.make(torch.float64, torch.Generator().manual_seed(3), 1.0))
    if info.row:  # fewer rows keep the finite differences quick
        x = {k: v[:3] for k, v in x.items() if k != "weight"} | ({"weight": x["weight"]} if "weight" in x else {})
    else:
        x = {k: v[:1] if v.dim() == 2 and v.shape[0] == 3 else v for k, v in x.items()}
    diff = differentiable_inputs(module, x)
    names = list(x)

    def fn(*tensors):
        return getattr(module, info.functional)(**dict(zip(names, tensors)), **config, reduction="sum", backend=backend)

    inputs = tuple(x[n].detach().clone().requires_grad_(n in diff) for n in names)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("info", LOSSES, ids=LOSS_IDS)
def test_stable_at_large_logits(info, dtype):
    """Inputs of magnitude 1e4: value and gradient finite on both backends, and equal to the oracle."""
    module = info.load()
    config = dict(info.configs[0])
    x, config = split_config(info, config, info.make(dtype, torch.Generator().manual_seed(4), 1.0))
    for name, v in list(x.items()):  # the scores/logits: +-1e4, both signs in every row
        if name in differentiable_inputs(module, x) or name == "target" and info.module == "distillation_kl":
            signs = torch.where(torch.arange(v.numel()).reshape(v.shape) % 2 == 0, 1.0, -1.0).to(dtype)
            x[name] = 1e4 * signs * (1 + v.abs() / 10)
    if info.module in ("mse", "l1", "huber", "smooth_l1"):
        x["target"] = x["input"].flip(-1)  # differences of order 1e4 as well
    h = hypers_of(info, module, config)
    diff = differentiable_inputs(module, x)
    for reduction in REDUCTIONS:
        ref_value, ref_grads = value_and_grads(lambda l: info.oracle(l, h, reduction), x, diff)
        for backend in ("torch", "triton"):
            value, grads = value_and_grads(run_generated(info, module, x, config, reduction, backend), x, diff)
            assert torch.isfinite(value).all() and all(torch.isfinite(g).all() for g in grads.values())
            assert rel_err(value, ref_value) <= TOL[dtype], (backend, reduction)
            for name in diff:
                assert rel_err(grads[name], ref_grads[name]) <= TOL[dtype], (backend, reduction, name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("info", [i for i in LOSSES if i.ignore_index], ids=lambda i: i.module)
def test_masked_rows(info, backend):
    """Rows whose target is ignore_index: loss 0, gradient exactly 0, and they do not count in the
    mean; a batch where every row is masked gives nan for "mean" (as torch) and 0 for "sum"."""
    module = info.load()
    fn = getattr(module, info.functional)
    x = info.make(torch.float64, torch.Generator().manual_seed(5), 1.0)
    x["input"][1] = 1e4  # a masked row with huge logits must not leak into anything
    inp = x["input"].clone().requires_grad_()
    args = {k: v for k, v in x.items() if k != "input"}
    loss = fn(inp, **args, reduction="none", backend=backend)
    assert loss[1].item() == 0.0
    (g,) = torch.autograd.grad(fn(inp, **args, reduction="mean", backend=backend), inp)
    assert torch.equal(g[1], torch.zeros_like(g[1])) and torch.isfinite(g).all()
    h = hypers_of(info, module, {})
    expected = info.oracle({**x, "input": x["input"]}, h, "mean")
    assert rel_err(fn(x["input"], **args, reduction="mean", backend=backend), expected) <= 1e-10
    everything = {**args, "target": torch.full_like(x["target"], -100)}
    assert torch.isnan(fn(x["input"], **everything, reduction="mean", backend=backend))
    assert fn(x["input"], **everything, reduction="sum", backend=backend).item() == 0.0
    if info.module == "cross_entropy":
        assert torch.isnan(torch.nn.functional.cross_entropy(x["input"], everything["target"]))


@pytest.mark.parametrize("info", LOSSES, ids=LOSS_IDS)
def test_result_is_a_device_tensor_without_host_sync(info):
    """The loss is a tensor on the prediction's device (0-dim unless "none"), in its dtype; the
    generated module never reads a value back to the host (.item(), .tolist(), float(tensor))."""
    module = info.load()
    source = open(module.__file__).read()
    for call in (".item()", ".tolist()", ".cpu()", "float(loss", ".numpy()"):
        assert call not in source, call
    x, config = split_config(info, dict(info.configs[0]), info.make(torch.float32, torch.Generator().manual_seed(6), 1.0))
    for reduction in ("mean", "sum"):
        out = getattr(module, info.functional)(**x, **config, reduction=reduction, backend="triton")
        assert isinstance(out, torch.Tensor) and out.dim() == 0 and out.dtype == torch.float32


def test_multi_block_rows_and_programs():
    """Rows longer than one block of classes (C > MAX_BLOCK_C) and elementwise losses spanning
    several programs: Triton vs reference."""
    from generated import cross_entropy, mse

    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(2, cross_entropy.MAX_BLOCK_C + 37, dtype=torch.float64, generator=gen) * 3
    target = torch.tensor([5, cross_entropy.MAX_BLOCK_C + 30])
    for reduction in REDUCTIONS:
        a, ga = value_and_grads(lambda l: cross_entropy.cross_entropy_loss(l["input"], target, label_smoothing=0.1,
                                                                             reduction=reduction, backend="triton"),
                                {"input": logits}, ["input"])
        b, gb = value_and_grads(lambda l: torch.nn.functional.cross_entropy(l["input"], target, label_smoothing=0.1,
                                                                             reduction=reduction),
                                {"input": logits}, ["input"])
        assert rel_err(a, b) <= 1e-10 and rel_err(ga["input"], gb["input"]) <= 1e-10
    x = {"input": torch.randn(mse.BLOCK + 5, dtype=torch.float64, generator=gen),
         "target": torch.randn(mse.BLOCK + 5, dtype=torch.float64, generator=gen)}
    for reduction in REDUCTIONS:
        a, ga = value_and_grads(lambda l: mse.mse_loss(**l, reduction=reduction, backend="triton"), x, ["input", "target"])
        b, gb = value_and_grads(lambda l: torch.nn.functional.mse_loss(**l, reduction=reduction), x, ["input", "target"])
        assert rel_err(a, b) <= 1e-10
        assert rel_err(ga["input"], gb["input"]) <= 1e-10 and rel_err(ga["target"], gb["target"]) <= 1e-10
