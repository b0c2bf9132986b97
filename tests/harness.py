"""Shared machinery for differential tests: build params, drive two optimizers in lockstep and
compare params and every state tensor after every step."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

# Relative error bounds: max |a - b| / max |b| per tensor.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


@dataclass
class OptimInfo:
    """One record per spec: where its generated class lives and what it is checked against.

    oracle: builds the outside implementation from (params, **kwargs); None when the spec has
        no outside oracle (its tests then use `transcription`).
    configs: keyword arguments to test, each run through every check.
    state_map: our state name -> the oracle's state name (for states both keep; torch mirrors keep
        identical names).
    oracle_kwargs: maps our kwargs to the oracle's constructor arguments.
    """

    spec: str  # file stem in specs/, e.g. "adamw"
    cls: str  # class name in generated/<spec>.py
    oracle: Optional[Callable] = None
    configs: list = field(default_factory=lambda: [{}])
    state_map: Optional[dict] = None
    oracle_kwargs: Optional[Callable] = None
    torch_mirror: bool = False  # same state names and checkpoint format as torch.optim
    tolerance: dict = field(default_factory=lambda: dict(TOLERANCE))
    shapes: tuple = ((7, 13), (129,), ())
    # state -> relative bound replacing `tolerance` for it at fp64, where the oracle itself keeps
    # that state in lower precision (torch.optim.NAdam's float32 mu_product)
    state_tolerance: dict = field(default_factory=dict)
    notes: str = ""
    # For specs that read `loss`: loss_fn(params, step, seed) -> 0-dim loss tensor (with autograd
    # graph). lockstep then takes each step's gradients from loss.backward() instead of make_grads
    # and passes the loss to both optimizers (see lockstep's loss_via). None: the spec ignores it.
    loss_fn: Optional[Callable] = None
    # True when a step's result depends on other parameters (global_* reductions): such a spec
    # cannot be checked by running one oracle per parameter subset.
    global_reduction: bool = False
    # A param group given to the oracle later (add_param_group) as the oracle needs it for the
    # same update: oracle_group(group, config) -> group. pytorch_optimizer.MARS scales its 1-D lr
    # by the lr_1d/lr ratio it caches per group, which a new group must be given explicitly.
    oracle_group: Optional[Callable] = None

    def bound(self, dtype) -> float:
        """One relative bound for params and every state: `tolerance[dtype]`, widened at fp64 by
        `state_tolerance` (a state the oracle keeps in lower precision moves the rest too)."""
        base = self.tolerance[dtype]
        return max([base, *self.state_tolerance.values()]) if dtype == torch.float64 else base

    @property
    def generated(self):
        module = importlib.import_module(f"generated.{self.spec}")
        return getattr(module, self.cls)

    def __str__(self):
        return self.spec


def make_params(shapes, dtype, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).to(device).requires_grad_() for shape in shapes]


def make_grads(params, step, seed=0):
    gen = torch.Generator().manual_seed(10_000 + seed * 1000 + step)
    return [torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype).to(p.device) for p in params]


def least_squares_loss(params, step, seed=0, rows=4):
    """A deterministic stochastic least-squares loss with minimum 0 (an interpolating problem):
    for each parameter x (flattened, n entries) a fixed target x* (from the seed) and a fresh
    rows x n matrix A_step (from seed and step); loss = sum over params of ||A (x - x*)||^2 / (2 rows).
    Every minibatch loss is >= 0 = f_star, as the Polyak step sizes require. The loss is computed
    in float64 and returned in the first parameter's dtype."""
    total = None
    for i, p in enumerate(params):
        n = p.numel()
        target_gen = torch.Generator().manual_seed(20_000 + seed * 1000 + i)
        batch_gen = torch.Generator().manual_seed(30_000 + seed * 100_000 + step * 100 + i)
        target = torch.randn(n, generator=target_gen, dtype=torch.float64).to(p.device)
        a = torch.randn(rows, n, generator=batch_gen, dtype=torch.float64).to(p.device)
        residual = a @ (p.reshape(-1).double() - target)
        term = residual.square().sum() / (2 * rows)
        total = term if total is None else total + term
    if total is None:
        return torch.zeros(())
    return total.to(params[0].dtype)


def _loss_step(opt, params, loss_fn, step, seed, loss_via):
    """One step of a loss-dependent optimizer: gradients from loss_fn by autograd, the loss given
    through step(closure) (the closure recomputes loss and grads, as torch closures do) or
    step(loss=...) after a separate backward."""

    def closure():
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = loss_fn(params, step, seed)
            loss.backward()
        return loss.detach()

    if loss_via == "closure":
        return opt.step(closure)
    if loss_via == "loss":
        loss = closure()
        return opt.step(loss=loss)
    raise ValueError(f"loss_via must be 'closure' or 'loss', not {loss_via!r}")


# A tensor whose values all sit near zero (a 0-dim moment crossing zero) is compared against this
# scale instead of its own, so one rounding step there does not read as a large relative error.
SCALE_FLOOR = 1e-2


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.is_complex() or expected.is_complex():
        actual, expected = torch.view_as_real(actual.detach()), torch.view_as_real(expected.detach())
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    if not torch.equal(torch.isnan(actual), torch.isnan(expected)):
        return float("inf")
    diff = (actual - expected).nan_to_num(0.0).abs().max().item()
    scale = expected.nan_to_num(0.0).abs().max().item()
    return diff / max(scale, SCALE_FLOOR) if diff else 0.0


def lockstep(make_a, make_b, shapes, dtype, steps, state_map, seed=0, on_step=None, resync=False, loss_fn=None,
             loss_via="closure"):
    """Step two optimizers on identical params and grads; return the worst relative error seen
    over all steps, for params and each mapped state.

    resync: after each comparison copy b's params and state into a, so every step starts from
    identical values and the error is one step's rounding (for bf16/fp16, where a one-ulp
    difference would otherwise compound).

    loss_fn: for optimizers that read the loss (OptimInfo.loss_fn, e.g. least_squares_loss): each
    optimizer's grads come from loss_fn(its params, step, seed).backward() and the loss is passed
    via step(closure) (loss_via="closure") or step(loss=...) (loss_via="loss"). Both sides start
    from identical params, so they see the same loss and grads up to their own rounding."""
    params_a = make_params(shapes, dtype, seed)
    params_b = make_params(shapes, dtype, seed)
    opt_a, opt_b = make_a(params_a), make_b(params_b)
    worst: dict[str, float] = {}
    for step in range(1, steps + 1):
        if loss_fn is not None:
            _loss_step(opt_a, params_a, loss_fn, step, seed, loss_via)
            _loss_step(opt_b, params_b, loss_fn, step, seed, loss_via)
        else:
            for pa, pb, g in zip(params_a, params_b, make_grads(params_a, step, seed)):
                pa.grad, pb.grad = g.clone(), g.clone()
            opt_a.step()
            opt_b.step()
        for i, (pa, pb) in enumerate(zip(params_a, params_b)):
            worst["param"] = max(worst.get("param", 0.0), rel_error(pa, pb))
            sa, sb = opt_a.state[pa], opt_b.state[pb]
            for ours, theirs in state_map.items():
                if theirs not in sb and ours not in sa:
                    continue
                if ours not in sa or theirs not in sb:
                    raise AssertionError(f"step {step}, param {i}: state {ours!r}/{theirs!r} present on one side only")
                worst[ours] = max(worst.get(ours, 0.0), rel_error(sa[ours], sb[theirs]))
                if resync:
                    sa[ours].copy_(sb[theirs])
            if resync:
                with torch.no_grad():
                    pa.copy_(pb)
        if on_step is not None:
            on_step(step, opt_a, opt_b)
    return worst
