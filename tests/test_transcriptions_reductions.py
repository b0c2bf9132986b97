"""The oracles of tests/records_reductions.py, checked against implementations written elsewhere:
pytorch_optimizer (centralize_gradient, Adan, AdamP's projection), torch compositions
(clip_grad_norm_/clip_grad_value_ + torch.optim.AdamW, AGR + torch.optim.AdamW), optax.polyak_sgd's
documented numbers, and the MomSPS iterate form. Also: SPS converges on least squares without a
tuned lr, the loss plumbing of harness.lockstep, and the records' configs reach every branch."""

from __future__ import annotations

import math

import pytest
import pytorch_optimizer as po
import torch

import records_reductions
import transcriptions_reductions as tr
from harness import OptimInfo, least_squares_loss, lockstep, make_grads, make_params

SHAPES = ((7, 13), (129,), ())
F64 = 1e-12


def _same_states(*names):
    return {n: n for n in names}


def _with_grad_transform(cls, transform, **fixed):
    """cls whose step first replaces every gradient by transform(grad): a composition of an
    outside optimizer with a gradient pre-processing step."""

    class Transformed(cls):
        def step(self, closure=None):
            with torch.no_grad():
                for group in self.param_groups:
                    for p in group["params"]:
                        if p.grad is not None:
                            p.grad.copy_(transform(p.grad))
            return super().step(closure)

    return lambda params, **kw: Transformed(params, **fixed, **kw)


def _assert_close(worst, tol=F64):
    assert worst, "nothing compared"
    bad = {k: v for k, v in worst.items() if not v <= tol}
    assert not bad, f"relative errors over {tol}: {bad}"


# ---------------------------------------------------------------------------------------------
# Gradient centralization


@pytest.mark.parametrize("shape", [(7, 13), (3, 4, 5), (2, 3, 4, 5), (129,), (), (1, 6), (6, 1)])
def test_centralize_matches_pytorch_optimizer(shape):
    g = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ours, theirs = g.clone(), g.clone()
    tr.centralize(ours)
    po.centralize_gradient(theirs, gc_conv_only=False)
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-15)
    if g.dim() > 1:
        assert ours.reshape(shape[0], -1).mean(dim=1).abs().max() < 1e-14
        assert not torch.equal(ours, g)
    else:
        assert torch.equal(ours, g)


@pytest.mark.parametrize(
    "ours, torch_cls, config",
    [
        (tr.GCSGD, torch.optim.SGD, {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.1, "nesterov": True}),
        (tr.GCSGD, torch.optim.SGD, {"lr": 0.05, "dampening": 0.2, "momentum": 0.5, "maximize": True}),
        (tr.GCAdam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}),
        (tr.GCAdam, torch.optim.Adam, {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    ],
)
def test_gc_compositions(ours, torch_cls, config):
    theirs = _with_grad_transform(torch_cls, lambda g: po_centralized(g), foreach=False)
    names = {"momentum_buffer"} if torch_cls is torch.optim.SGD else {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    worst = lockstep(lambda ps: ours(ps, **config), lambda ps: theirs(ps, **config), SHAPES + ((3, 4, 5),),
                     torch.float64, 25, _same_states(*names))
    _assert_close(worst)
    # GC changes the trajectory: the plain torch optimizer ends elsewhere.
    worst_plain = lockstep(lambda ps: ours(ps, **config), lambda ps: torch_cls(ps, foreach=False, **config),
                           SHAPES, torch.float64, 5, {})
    assert worst_plain["param"] > 1e-6


def po_centralized(g):
    g = g.clone()
    po.centralize_gradient(g, gc_conv_only=False)
    return g


# ---------------------------------------------------------------------------------------------
# Clipping compositions vs hand-written clipping + torch.optim.AdamW


def _clip_global_by_hand(params, max_norm):
    total = math.sqrt(sum(float((p.grad.double() ** 2).sum()) for p in params if p.grad is not None))
    coef = min(max_norm / (total + 1e-6), 1.0)
    for p in params:
        p.grad.mul_(coef)


class _HandClipGlobalAdamW(torch.optim.AdamW):
    def __init__(self, params, max_norm=1.0, **kw):
        super().__init__(params, foreach=False, **kw)
        self.max_norm = max_norm

    def step(self, closure=None):
        _clip_global_by_hand([p for g in self.param_groups for p in g["params"]], self.max_norm)
        return super().step(closure)


ADAMW_STATES = _same_states("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@pytest.mark.parametrize("config", [{}, {"max_norm": 0.5, "lr": 0.01, "amsgrad": True}, {"max_norm": 100.0}])
def test_clip_global_matches_hand_clipping(config):
    worst = lockstep(lambda ps: tr.AdamWClipGlobal(ps, **config), lambda ps: _HandClipGlobalAdamW(ps, **config),
                     SHAPES, torch.float64, 25, ADAMW_STATES)
    _assert_close(worst)


def test_clip_global_is_global_and_active():
    """The norm is over all parameters (clipping each tensor by its own norm differs), clipping is
    active at max_norm=1 for these grads and inactive at 100 (then plain AdamW)."""
    worst = lockstep(lambda ps: tr.AdamWClipGlobal(ps), lambda ps: tr.AdamWClipTensor(ps), SHAPES, torch.float64, 3, {})
    assert worst["param"] > 1e-6
    worst = lockstep(lambda ps: tr.AdamWClipGlobal(ps), lambda ps: torch.optim.AdamW(ps), SHAPES, torch.float64, 3, {})
    assert worst["param"] > 1e-6
    worst = lockstep(lambda ps: tr.AdamWClipGlobal(ps, max_norm=100.0), lambda ps: torch.optim.AdamW(ps, foreach=False),
                     SHAPES, torch.float64, 25, ADAMW_STATES)
    _assert_close(worst)


def test_clip_global_two_groups_share_the_norm():
    pa, pb = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    oa = tr.AdamWClipGlobal([{"params": pa[:1], "max_norm": 0.5}, {"params": pa[1:]}], max_norm=2.0)
    ob = torch.optim.AdamW([{"params": pb[:1]}, {"params": pb[1:]}], foreach=False)
    for step in range(1, 6):
        grads = make_grads(pa, step)
        total = math.sqrt(sum(float((g**2).sum()) for g in grads))
        for i, (x, y, g) in enumerate(zip(pa, pb, grads)):
            x.grad = g.clone()
            y.grad = g * min((0.5 if i == 0 else 2.0) / (total + 1e-6), 1.0)
        oa.step()
        ob.step()
        for x, y in zip(pa, pb):
            assert torch.allclose(x, y, rtol=1e-13, atol=1e-15)


def _clip_tensor_by_hand(g, max_norm):
    return g * min(max_norm / (float(g.double().norm()) + 1e-6), 1.0)


@pytest.mark.parametrize("config", [{}, {"max_norm": 3.0, "weight_decay": 0.1, "maximize": True}])
def test_clip_tensor_matches_hand_clipping(config):
    max_norm = config.get("max_norm", 1.0)
    rest = {k: v for k, v in config.items() if k != "max_norm"}
    theirs = _with_grad_transform(torch.optim.AdamW, lambda g: _clip_tensor_by_hand(g, max_norm), foreach=False)
    worst = lockstep(lambda ps: tr.AdamWClipTensor(ps, **config), lambda ps: theirs(ps, **rest), SHAPES,
                     torch.float64, 25, ADAMW_STATES)
    _assert_close(worst)


@pytest.mark.parametrize("config", [{}, {"clip_value": 0.3, "lr": 0.01, "amsgrad": True}])
def test_clip_value_matches_clamp(config):
    c = config.get("clip_value", 1.0)
    rest = {k: v for k, v in config.items() if k != "clip_value"}
    theirs = _with_grad_transform(torch.optim.AdamW, lambda g: g.clamp(-c, c), foreach=False)
    worst = lockstep(lambda ps: tr.AdamWClipValue(ps, **config), lambda ps: theirs(ps, **rest), SHAPES,
                     torch.float64, 25, ADAMW_STATES)
    _assert_close(worst)
    worst = lockstep(lambda ps: tr.AdamWClipValue(ps, **config), lambda ps: torch.optim.AdamW(ps, **rest),
                     SHAPES, torch.float64, 3, {})
    assert worst["param"] > 1e-6  # randn grads exceed the clip value somewhere


# ---------------------------------------------------------------------------------------------
# AGR


def _agr_outside(g):
    """The AGR authors' formula (hjiang24/AGR-method, AGR.py), for a nonzero gradient."""
    s = g.abs().sum()
    return g - g * (g.abs() / s)


def test_agr_function():
    g = torch.tensor([3.0, -1.0, 0.0, 4.0], dtype=torch.float64)
    assert torch.allclose(tr.agr(g), torch.tensor([3 * (1 - 3 / 8), -1 * (1 - 1 / 8), 0.0, 4 * (1 - 4 / 8)],
                                                  dtype=torch.float64))
    assert torch.equal(tr.agr(torch.zeros(3)), torch.zeros(3))  # the authors' code gives NaN here
    assert torch.equal(tr.agr(torch.tensor(2.0)), torch.tensor(0.0))  # one element: alpha = 1


@pytest.mark.parametrize("config", [{}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
                                    {"amsgrad": True, "maximize": True}])
def test_agr_adamw_matches_agr_then_torch_adamw(config):
    theirs = _with_grad_transform(torch.optim.AdamW, _agr_outside, foreach=False)
    worst = lockstep(lambda ps: tr.AGRAdamW(ps, **config), lambda ps: theirs(ps, **config), SHAPES, torch.float64,
                     25, ADAMW_STATES)
    _assert_close(worst)


@pytest.mark.parametrize("config", [{}, {"lr": 0.01, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1}])
def test_agr_adan_matches_agr_then_pytorch_optimizer_adan(config):
    theirs = _with_grad_transform(po.Adan, _agr_outside, foreach=False, weight_decouple=False, max_grad_norm=0.0)
    worst = lockstep(lambda ps: tr.AGRAdan(ps, **config), lambda ps: theirs(ps, **config), SHAPES, torch.float64,
                     25, _same_states("exp_avg", "exp_avg_diff", "exp_avg_sq"))
    _assert_close(worst, 1e-10)  # pytorch_optimizer adds 1e-15 under the square root


# ---------------------------------------------------------------------------------------------
# Polyak step sizes


def _quadratic(params):
    return sum((p**2).sum() for p in params)


def _optax_example(make, split):
    """optax.polyak_sgd's docstring: f(x) = sum x^2 from x = [1, 2, 3] with the defaults
    (max_learning_rate=1, f_min=0, eps=0) gives f = 3.5, 0.875, 0.21875, 0.0546875, 0.013671875.
    By hand: g = 2x, ||g||^2 = 4 f, step = min(f / 4f, 1) = 1/4, x <- x/2, f <- f/4."""
    x = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    params = [x[:2].clone().requires_grad_(), x[2:].clone().requires_grad_()] if split else [x.clone().requires_grad_()]
    opt = make(params)
    values = []
    for _ in range(5):
        def closure():
            opt.zero_grad()
            loss = _quadratic(params)
            loss.backward()
            return loss
        opt.step(closure)
        values.append(float(_quadratic(params).detach()))
    return values


OPTAX_VALUES = [3.5, 0.875, 0.21875, 0.0546875, 0.013671875]


@pytest.mark.parametrize("split", [False, True], ids=["one-tensor", "two-tensors"])
@pytest.mark.parametrize("make", [lambda ps: tr.SPSMax(ps), lambda ps: tr.SPS(ps),
                                  lambda ps: tr.SPSMomentum(ps, momentum=0.0, max_lr=1.0)],
                         ids=["sps_max", "sps", "sps_momentum0"])
def test_polyak_reproduces_optax_docstring(make, split):
    assert _optax_example(make, split) == pytest.approx(OPTAX_VALUES, rel=1e-14)


def test_sps_max_caps_the_step():
    # max_lr = 0.1 < 1/4: x <- x - 0.1 * 2x = 0.8x, f <- 0.64 f.
    values = _optax_example(lambda ps: tr.SPSMax(ps, max_lr=0.1), False)
    assert values == pytest.approx([14 * 0.64 ** k for k in range(1, 6)], rel=1e-14)
    # c = 0.5 doubles the Polyak step: 1/2, x <- 0, f <- 0.
    assert _optax_example(lambda ps: tr.SPS(ps, c=0.5), False)[0] == pytest.approx(0.0, abs=1e-30)
    # f_star = 7 halves the gap: step 1/8, x <- 0.75 x.
    assert _optax_example(lambda ps: tr.SPS(ps, f_star=7.0), False)[0] == pytest.approx(14 * 0.5625, rel=1e-14)


def test_loss_given_as_closure_or_keyword_or_missing():
    a = lockstep(lambda ps: tr.SPSMax(ps, max_lr=5.0), lambda ps: tr.SPSMax(ps, max_lr=5.0), SHAPES, torch.float64,
                 10, {}, loss_fn=least_squares_loss, loss_via="closure")
    b = lockstep(lambda ps: tr.SPSMax(ps, max_lr=5.0), lambda ps: tr.SPSMax(ps, max_lr=5.0), SHAPES, torch.float64,
                 10, {}, loss_fn=least_squares_loss, loss_via="loss")
    assert a == {"param": 0.0} and b == {"param": 0.0}
    pa, pb = make_params(SHAPES, torch.float64), make_params(SHAPES, torch.float64)
    oa, ob = tr.SPS(pa), tr.SPS(pb)
    for step in range(1, 6):
        def closure(params=pa, step=step):
            for p in params:
                p.grad = None
            loss = least_squares_loss(params, step)
            loss.backward()
            return loss
        returned = oa.step(closure)
        for p in pb:
            p.grad = None
        with torch.enable_grad():
            loss = least_squares_loss(pb, step)
            loss.backward()
        ob.step(loss=loss.detach())
        assert returned.item() == loss.item()
        for x, y in zip(pa, pb):
            assert torch.equal(x, y)
    with pytest.raises(RuntimeError, match="needs the loss"):
        ob.step()


def test_sps_momentum_matches_iterate_form():
    """MomSPS_max as its authors write it, x_{t+1} = x_t - gamma_t g_t + beta (x_t - x_{t-1}),
    against the buffer form of the transcription."""
    beta, c, max_lr = 0.7, 0.8, 2.0
    pa = make_params(SHAPES, torch.float64)
    xs = [p.detach().clone() for p in pa]
    prev = [x.clone() for x in xs]
    opt = tr.SPSMomentum(pa, momentum=beta, c=c, max_lr=max_lr)
    for step in range(1, 26):
        opt.step(lambda: _closure(pa, step))
        xg = [x.clone().requires_grad_() for x in xs]
        loss = least_squares_loss(xg, step)
        grads = torch.autograd.grad(loss, xg)
        gamma = (1 - beta) * min(float(loss) / (c * sum(float((g**2).sum()) for g in grads)), max_lr)
        new = [x - gamma * g + beta * (x - xp) for x, g, xp in zip(xs, grads, prev)]
        prev, xs = xs, new
        for p, x in zip(pa, xs):
            assert torch.allclose(p, x, rtol=1e-11, atol=1e-13)


def _closure(params, step):
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = least_squares_loss(params, step)
        loss.backward()
    return loss.detach()


@pytest.mark.parametrize("scale", [1.0, 100.0, 0.01])
def test_sps_converges_on_least_squares_without_tuning(scale):
    """Full-batch least squares with f* = 0, the matrix scaled by 1e-2..1e2 (a fixed SGD lr would
    have to be retuned by 1e4 across these): SPS with its defaults drops the loss by 1e6 or more
    within 200 steps."""
    gen = torch.Generator().manual_seed(0)
    a = scale * torch.randn(50, 20, generator=gen, dtype=torch.float64)
    b = a @ torch.randn(20, generator=gen, dtype=torch.float64)
    x = torch.zeros(20, dtype=torch.float64, requires_grad=True)
    opt = tr.SPS([x])

    def loss_fn():
        return 0.5 * ((a @ x - b) ** 2).mean()

    first = float(loss_fn())
    for _ in range(200):
        def closure():
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            return loss
        opt.step(closure)
    last = float(loss_fn())
    assert last < 1e-6 * first, (first, last)


def test_sps_stochastic_least_squares_decreases():
    params = make_params(((5, 3), (4,)), torch.float64)
    opt = tr.SPS(params)
    first = float(least_squares_loss(params, 0, rows=20))
    for step in range(1, 201):
        opt.step(lambda: _closure(params, step))
    last = float(least_squares_loss(params, 0, rows=20))
    assert last < 1e-3 * first, (first, last)


# ---------------------------------------------------------------------------------------------
# The records: valid oracles, configs that reach every branch


@pytest.mark.parametrize("record", records_reductions.ORACLE_RECORDS, ids=str)
def test_record_oracles_run(record: OptimInfo):
    """Every config of every record builds its oracle, steps it 3 times (with the loss when the
    record has a loss_fn) and keeps finite params; every mapped state exists on the oracle."""
    states = set()
    for config in record.configs:
        kwargs = record.oracle_kwargs(config) if record.oracle_kwargs else config
        params = make_params(record.shapes, torch.float64)
        opt = record.oracle(params, **kwargs)
        for step in range(1, 4):
            if record.loss_fn is not None:
                opt.step(lambda: _closure_with(record.loss_fn, params, step))
            else:
                for p, g in zip(params, make_grads(params, step)):
                    p.grad = g
                opt.step()
        assert all(torch.isfinite(p).all() for p in params)
        states |= set().union(*(opt.state[p].keys() for p in params))
    missing = set((record.state_map or {}).values()) - states
    assert not missing, f"mapped states that no config creates: {missing}"


def _closure_with(loss_fn, params, step):
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = loss_fn(params, step, 0)
        loss.backward()
    return loss.detach()


def _record(spec):
    return next(r for r in records_reductions.ORACLE_RECORDS if r.spec == spec)


@pytest.mark.parametrize("spec", ["adamp", "sgdp"])
def test_adamp_configs_reach_every_projection_branch(spec):
    """pytorch_optimizer's projection picks, per step and 2-D tensor, the channel view, the layer
    view or neither (cosine thresholds delta/sqrt(cols) and delta/sqrt(numel)); with random
    gradients the default delta=0.1 never projects, so the records' configs must move delta."""
    record = _record(spec)
    seen = set()
    for config in record.configs:
        delta = config.get("delta", 0.1)
        params = make_params(record.shapes, torch.float64)
        opt = record.oracle(params, **config)
        for step in range(1, 26):
            for p, g in zip(params, make_grads(params, step)):
                p.grad = g
                if p.dim() > 1:
                    rows = torch.nn.functional.cosine_similarity(g.reshape(g.shape[0], -1), p.reshape(p.shape[0], -1),
                                                                 dim=1, eps=1e-8).abs().max()
                    layer = torch.nn.functional.cosine_similarity(g.reshape(1, -1), p.reshape(1, -1), dim=1,
                                                                  eps=1e-8).abs().max()
                    if rows < delta / math.sqrt(p[0].numel()):
                        seen.add("channel")
                    elif layer < delta / math.sqrt(p.numel()):
                        seen.add("layer")
                    else:
                        seen.add("none")
            opt.step()
    assert seen == {"channel", "layer", "none"}, seen


def test_mars_configs_reach_both_clip_branches():
    record = _record("mars_adamw")
    seen = set()
    for config in record.configs:
        params = make_params(record.shapes, torch.float64)
        opt = record.oracle(params, **config)
        gamma = config.get("gamma", 0.025)
        beta1 = config.get("betas", (0.95, 0.99))[0]
        for step in range(1, 26):
            for p, g in zip(params, make_grads(params, step)):
                if (p.dim() >= 2 or config.get("optimize_1d")) and p.numel():
                    last = opt.state[p]["last_grad"] if opt.state[p] else torch.zeros_like(p)
                    c = g + gamma * beta1 / (1 - beta1) * (g - last)
                    seen.add("clipped" if c.norm() > 1 else "unclipped")
                p.grad = g.clone()
            opt.step()
    assert seen == {"clipped", "unclipped"}, seen
