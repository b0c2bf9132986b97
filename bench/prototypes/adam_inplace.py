# PROTOTYPE (bench/prototypes, not generated): generated/adam.py (optdsl 0.1.0, specs/adam.opt)
# with its CPU reference path hand-edited to show what the template/printer change in
# docs/performance.md ("CPU reference path") buys. Only `_reference_inplace`, `MODE` and
# `Adam._update_reference` differ from generated/adam.py; everything else is verbatim.
# MODE = "generated" (unchanged path) or "inplace" (the rule written with in-place / fused torch
# ops straight into param and state, chunk by chunk; fp32/fp64 contiguous tensors only, others
# take the generated path).
# spec sha256: a08c1ba1035a3d7c2385f2abb8440174a06982d901c6914221fc85ef960f3b4f
"""Adam: A Method for Stochastic Optimization (Kingma & Ba, ICLR 2015).

Mirrors torch.optim.Adam: L2 weight decay added to the gradient (or, with
decoupled_weight_decay, applied to the parameter as in AdamW) and optional AMSGrad.

A fused Triton kernel (CUDA tensors) and a plain PyTorch reference (everything else) behind one
`torch.optim.Optimizer`. This module imports only torch, and triton when it is installed.
"""

from __future__ import annotations

import math
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs still get the reference implementation.
    triton = None


def _jit(fn):
    return triton.jit(fn) if triton is not None else fn


BLOCK_SIZE = 1024
CPU_CHUNK = 1 << 16  # elements per reference call on large tensors

# IEEE-style host math: inf/nan where `math` would raise, as the kernels and torch behave.
def _pow(x, y):
    try:
        result = x ** y
    except (OverflowError, ZeroDivisionError):
        return math.inf
    return math.nan if isinstance(result, complex) else result

def _sqrt(x):
    return math.sqrt(x) if x >= 0 else math.nan


# ---------------------------------------------------------------------------------------------
# Reference implementation: the update as written in the spec, in plain PyTorch.


def _reference(param, grad, state, h):
    """One Adam step for one tensor; returns the new values of everything the rule assigns.

    `param`, `grad` and the tensors in `state` arrive in the compute dtype (float32, or float64
    for float64 parameters); `h` holds the hyperparameters, `step` and the `fresh_*` flags.
    """
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    eps = h["eps"]
    weight_decay = h["weight_decay"]
    amsgrad = h["amsgrad"]
    maximize = h["maximize"]
    decoupled_weight_decay = h["decoupled_weight_decay"]
    step = h["step"]
    exp_avg = state.get("exp_avg")
    exp_avg_sq = state.get("exp_avg_sq")
    max_exp_avg_sq = state.get("max_exp_avg_sq")
    g = (-grad if maximize else grad)
    if decoupled_weight_decay:
        param = param * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * param
    exp_avg = torch.lerp(exp_avg, g, 1 - beta1)
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * g ** 2
    if amsgrad:
        max_exp_avg_sq = torch.maximum(max_exp_avg_sq, exp_avg_sq)
        v = max_exp_avg_sq
    else:
        v = exp_avg_sq
    denom = torch.sqrt(v) / _sqrt(1 - _pow(beta2, step)) + eps
    param = param - lr / (1 - _pow(beta1, step)) * exp_avg / denom
    return {"param": param, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq, "max_exp_avg_sq": max_exp_avg_sq}


MODE = "inplace"


def _reference_inplace(param, grad, state, h):
    """The rule with each state's and the param's last assignment done in place on the target
    (torch.optim's for-loop op sequence); the L2 term is skipped when weight_decay is 0."""
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    eps = h["eps"]
    weight_decay = h["weight_decay"]
    step = h["step"]
    exp_avg = state["exp_avg"]
    exp_avg_sq = state["exp_avg_sq"]
    g = -grad if h["maximize"] else grad
    if h["decoupled_weight_decay"]:
        if lr * weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
    elif weight_decay != 0:
        g = torch.add(g, param, alpha=weight_decay)
    exp_avg.lerp_(g, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    if h["amsgrad"]:
        v = torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
    else:
        v = exp_avg_sq
    denom = v.sqrt().div_(_sqrt(1 - _pow(beta2, step))).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / (1 - _pow(beta1, step)))


# ---------------------------------------------------------------------------------------------
# Triton kernels: one program per BLOCK_SIZE elements, math in float32. Scalars that depend only
# on hyperparameters and the step are computed once on the host by the launcher.


@_jit
def _adam_kernel_decoupled_weight_decay_amsgrad(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
    beta2, eps, c0, c1, c2, c3, c4, c5,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    max_exp_avg_sq = tl.load(max_exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq_new = beta2*exp_avg_sq + c1*grad * grad
    max_exp_avg_sq_new = tl.maximum(exp_avg_sq_new, max_exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
    g = c3*grad
    exp_avg_new = c4*(-exp_avg + g) + exp_avg
    tl.store(param_ptr + offsets, (c0*param + c5*exp_avg_new/(c2*tl.sqrt(max_exp_avg_sq_new) + eps)).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_ptr + offsets, (exp_avg_new).to(exp_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, (exp_avg_sq_new).to(exp_avg_sq_ptr.dtype.element_ty), mask=mask)
    tl.store(max_exp_avg_sq_ptr + offsets, (max_exp_avg_sq_new).to(max_exp_avg_sq_ptr.dtype.element_ty), mask=mask)


def _adam_launch_decoupled_weight_decay_amsgrad(param, grad, state, h):
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    weight_decay = h["weight_decay"]
    maximize = h["maximize"]
    step = h["step"]
    c0 = -lr*weight_decay + 1
    c1 = 1 - beta2
    c2 = 1 / _sqrt(1 - _pow(beta2, step))
    c3 = (-1.0 if maximize else 1.0)
    c4 = 1 - beta1
    c5 = -lr/(1 - _pow(beta1, step))
    eps = h["eps"]
    n_elements = param.numel()
    _adam_kernel_decoupled_weight_decay_amsgrad[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"],
        beta2, eps, c0, c1, c2, c3, c4, c5,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _adam_kernel_decoupled_weight_decay_not_amsgrad(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr,
    beta2, eps, c0, c1, c2, c3, c4, c5,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq_new = beta2*exp_avg_sq + c1*grad * grad
    g = c3*grad
    exp_avg_new = c4*(-exp_avg + g) + exp_avg
    denom = c2*tl.sqrt(exp_avg_sq_new) + eps
    tl.store(param_ptr + offsets, (c0*param + c5*exp_avg_new/denom).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_ptr + offsets, (exp_avg_new).to(exp_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, (exp_avg_sq_new).to(exp_avg_sq_ptr.dtype.element_ty), mask=mask)


def _adam_launch_decoupled_weight_decay_not_amsgrad(param, grad, state, h):
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    weight_decay = h["weight_decay"]
    maximize = h["maximize"]
    step = h["step"]
    c0 = -lr*weight_decay + 1
    c1 = 1 - beta2
    c2 = 1 / _sqrt(1 - _pow(beta2, step))
    c3 = (-1.0 if maximize else 1.0)
    c4 = 1 - beta1
    c5 = -lr/(1 - _pow(beta1, step))
    eps = h["eps"]
    n_elements = param.numel()
    _adam_kernel_decoupled_weight_decay_not_amsgrad[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["exp_avg"], state["exp_avg_sq"],
        beta2, eps, c0, c1, c2, c3, c4, c5,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _adam_kernel_not_decoupled_weight_decay_amsgrad(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr, max_exp_avg_sq_ptr,
    beta2, eps, weight_decay, c0, c1, c2, c3, c4,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    max_exp_avg_sq = tl.load(max_exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    g = c0*grad
    tmp0 = g + param*weight_decay
    exp_avg_new = c3*(-exp_avg + tmp0) + exp_avg
    g_2 = tmp0
    exp_avg_sq_new = beta2*exp_avg_sq + c1*g_2 * g_2
    max_exp_avg_sq_new = tl.maximum(exp_avg_sq_new, max_exp_avg_sq, propagate_nan=tl.PropagateNan.ALL)
    tl.store(param_ptr + offsets, (c4*exp_avg_new/(c2*tl.sqrt(max_exp_avg_sq_new) + eps) + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_ptr + offsets, (exp_avg_new).to(exp_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, (exp_avg_sq_new).to(exp_avg_sq_ptr.dtype.element_ty), mask=mask)
    tl.store(max_exp_avg_sq_ptr + offsets, (max_exp_avg_sq_new).to(max_exp_avg_sq_ptr.dtype.element_ty), mask=mask)


def _adam_launch_not_decoupled_weight_decay_amsgrad(param, grad, state, h):
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    maximize = h["maximize"]
    step = h["step"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = 1 - beta2
    c2 = 1 / _sqrt(1 - _pow(beta2, step))
    c3 = 1 - beta1
    c4 = -lr/(1 - _pow(beta1, step))
    eps = h["eps"]
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _adam_kernel_not_decoupled_weight_decay_amsgrad[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"],
        beta2, eps, weight_decay, c0, c1, c2, c3, c4,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _adam_kernel_not_decoupled_weight_decay_not_amsgrad(
    param_ptr, grad_ptr, exp_avg_ptr, exp_avg_sq_ptr,
    beta2, eps, weight_decay, c0, c1, c2, c3, c4,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg = tl.load(exp_avg_ptr + offsets, mask=mask).to(tl.float32)
    exp_avg_sq = tl.load(exp_avg_sq_ptr + offsets, mask=mask).to(tl.float32)
    g = c0*grad
    tmp0 = g + param*weight_decay
    exp_avg_new = c3*(-exp_avg + tmp0) + exp_avg
    g_2 = tmp0
    exp_avg_sq_new = beta2*exp_avg_sq + c1*g_2 * g_2
    denom = c2*tl.sqrt(exp_avg_sq_new) + eps
    tl.store(param_ptr + offsets, (c4*exp_avg_new/denom + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_ptr + offsets, (exp_avg_new).to(exp_avg_ptr.dtype.element_ty), mask=mask)
    tl.store(exp_avg_sq_ptr + offsets, (exp_avg_sq_new).to(exp_avg_sq_ptr.dtype.element_ty), mask=mask)


def _adam_launch_not_decoupled_weight_decay_not_amsgrad(param, grad, state, h):
    lr = h["lr"]
    beta1 = h["beta1"]
    beta2 = h["beta2"]
    maximize = h["maximize"]
    step = h["step"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = 1 - beta2
    c2 = 1 / _sqrt(1 - _pow(beta2, step))
    c3 = 1 - beta1
    c4 = -lr/(1 - _pow(beta1, step))
    eps = h["eps"]
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _adam_kernel_not_decoupled_weight_decay_not_amsgrad[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["exp_avg"], state["exp_avg_sq"],
        beta2, eps, weight_decay, c0, c1, c2, c3, c4,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


# ---------------------------------------------------------------------------------------------
# Dispatch: each `if` in the spec is decided per tensor on the host and selects a kernel.


def _variant(h):
    amsgrad = h["amsgrad"]
    decoupled_weight_decay = h["decoupled_weight_decay"]
    return (bool(decoupled_weight_decay), bool(amsgrad))


# variant -> (launcher, states it touches, tensors it writes)
_VARIANTS = {
    (True, True): (_adam_launch_decoupled_weight_decay_amsgrad, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    (True, False): (_adam_launch_decoupled_weight_decay_not_amsgrad, ("exp_avg", "exp_avg_sq"), ("param", "exp_avg", "exp_avg_sq")),
    (False, True): (_adam_launch_not_decoupled_weight_decay_amsgrad, ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), ("param", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")),
    (False, False): (_adam_launch_not_decoupled_weight_decay_not_amsgrad, ("exp_avg", "exp_avg_sq"), ("param", "exp_avg", "exp_avg_sq")),
}


def _init_state(name, param, h):
    if name == "exp_avg":
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    if name == "exp_avg_sq":
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    if name == "max_exp_avg_sq":
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    raise KeyError(name)


def _hyperparameters(group):
    """The scalars the rule reads, from one param group (tuples destructured, tensors read)."""
    beta1, beta2 = group["betas"]
    return {
        "lr": _as_float(group["lr"]),
        "beta1": _as_float(beta1),
        "beta2": _as_float(beta2),
        "eps": _as_float(group["eps"]),
        "weight_decay": _as_float(group["weight_decay"]),
        "amsgrad": bool(group["amsgrad"]),
        "maximize": bool(group["maximize"]),
        "decoupled_weight_decay": bool(group["decoupled_weight_decay"]),
    }


def _validate(group):
    """Raise ValueError naming the first invalid hyperparameter of a param group."""
    lr = _as_float(group["lr"], "lr")
    value = group["betas"]
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid betas: expected 2 numbers, got {value!r}")
    beta1, beta2 = (_as_float(v, "betas") for v in value)
    eps = _as_float(group["eps"], "eps")
    weight_decay = _as_float(group["weight_decay"], "weight_decay")
    if not isinstance(group["amsgrad"], bool):
        raise ValueError(f"Invalid amsgrad: expected True or False, got {group['amsgrad']!r}")
    if not isinstance(group["maximize"], bool):
        raise ValueError(f"Invalid maximize: expected True or False, got {group['maximize']!r}")
    if not isinstance(group["decoupled_weight_decay"], bool):
        raise ValueError(f"Invalid decoupled_weight_decay: expected True or False, got {group['decoupled_weight_decay']!r}")
    if not (lr >= 0):
        raise ValueError(f"Invalid lr: {group['lr']!r} (requires lr >= 0)")
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
        raise ValueError(f"Invalid betas: {group['betas']!r} (requires 0 <= beta1 < 1 and 0 <= beta2 < 1)")
    if not (eps >= 0):
        raise ValueError(f"Invalid eps: {group['eps']!r} (requires eps >= 0)")
    if not (weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay: {group['weight_decay']!r} (requires weight_decay >= 0)")


def _as_float(value, name=None):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"Invalid {name}: a tensor hyperparameter must hold one value, got shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"Invalid {name}: expected a number, got {value!r}")
    return float(value)


def _scalar_dtype():
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _use_triton(param, backend):
    if backend == "torch":
        return False
    if backend == "triton":
        if triton is None:
            raise RuntimeError("backend='triton' needs the triton package")
        if not param.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run kernels on the CPU)")
        return True
    return triton is not None and param.is_cuda and param.dtype in (torch.float32, torch.float16, torch.bfloat16)


def _reference_into(targets, grad, writes, h, compute):
    """Run the reference on `targets` (param and states) and write back what the rule assigns."""
    inputs = {name: t.to(compute) for name, t in targets.items() if name != "param"}
    param = targets["param"].to(compute)
    result = _reference(param, grad.to(compute), inputs, h)
    # A rule may return another input unchanged (`v = exp_avg_sq`, `m = param`): copy all such
    # values before the first write-back, which may overwrite that input.
    owner = {id(t): name for name, t in dict(inputs, param=param).items()}
    values = {}
    for name in writes:
        value = result[name]
        values[name] = value.clone() if owner.get(id(value), name) != name else value
    for name in writes:
        targets[name].copy_(values[name])


def _real(tensor):
    return torch.view_as_real(tensor) if torch.is_complex(tensor) else tensor


class Adam(torch.optim.Optimizer):
    """Adam: A Method for Stochastic Optimization (Kingma & Ba, ICLR 2015).

    Mirrors torch.optim.Adam: L2 weight decay added to the gradient (or, with
    decoupled_weight_decay, applied to the parameter as in AdamW) and optional AMSGrad.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: default 0.001; requires lr >= 0.
        betas: default (0.9, 0.999), read as (beta1, beta2); requires 0 <= beta1 < 1 and 0 <= beta2 < 1.
        eps: default 1e-08; requires eps >= 0.
        weight_decay: default 0; requires weight_decay >= 0.
        amsgrad: default False.
        maximize: default False.
        decoupled_weight_decay: default False.
        backend: "auto" (Triton for CUDA tensors, the PyTorch reference otherwise), "triton"
            or "torch".

    State per parameter: `step`, `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`.
    """

    def __init__(
        self,
        params,
        lr=0.001,
        betas=(0.9, 0.999),
        eps=1e-08,
        weight_decay=0,
        amsgrad=False,
        maximize=False,
        decoupled_weight_decay=False,
        *,
        backend="auto",
    ):
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"Invalid backend: {backend!r} (expected 'auto', 'triton' or 'torch')")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize, decoupled_weight_decay=decoupled_weight_decay)
        _validate(defaults)
        self.backend = backend
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        try:
            _validate(self.param_groups[-1])
        except ValueError:
            self.param_groups.pop()
            raise

    def __getstate__(self):
        # torch.optim.Optimizer pickles only defaults/state/param_groups; deepcopy and pickle
        # must keep the backend too.
        return dict(super().__getstate__(), backend=self.backend)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("backend", "auto")
        for group in self.param_groups:
            group.setdefault("lr", self.defaults["lr"])
            group.setdefault("betas", self.defaults["betas"])
            group.setdefault("eps", self.defaults["eps"])
            group.setdefault("weight_decay", self.defaults["weight_decay"])
            group.setdefault("amsgrad", self.defaults["amsgrad"])
            group.setdefault("maximize", self.defaults["maximize"])
            group.setdefault("decoupled_weight_decay", self.defaults["decoupled_weight_decay"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step. `closure` re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            hyperparameters = _hyperparameters(group)
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, param.grad, self.state[param], hyperparameters)
        return loss

    def _update(self, param, grad, state, hyperparameters):
        if grad.is_sparse:
            raise RuntimeError("Adam does not support sparse gradients")
        if len(state) == 0 or "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        state["step"] += 1
        h = dict(hyperparameters, step=float(state["step"]))
        launch, touched, writes = _VARIANTS[_variant(h)]
        for name in touched:
            if name not in state:
                state[name] = _init_state(name, param, h)
        param, grad = _real(param), _real(grad)
        tensors = {name: _real(state[name]) for name in touched}
        if _use_triton(param, self.backend):
            self._update_triton(launch, param, grad, tensors, writes, h)
        else:
            self._update_reference(param, grad, tensors, writes, h)

    @staticmethod
    def _update_reference(param, grad, tensors, writes, h):
        compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        targets = dict(tensors, param=param)
        dense = [param, grad, *tensors.values()]
        if MODE == "inplace" and all(t.dtype == compute and t.is_contiguous() for t in dense):
            # In place on chunk views: the temporaries (denom) stay cache-sized.
            if param.numel() <= CPU_CHUNK:
                _reference_inplace(param, grad, tensors, h)
                return
            flat = {name: t.view(-1) for name, t in tensors.items()}
            flat_param, flat_grad = param.view(-1), grad.view(-1)
            for start in range(0, param.numel(), CPU_CHUNK):
                chunk = slice(start, start + CPU_CHUNK)
                _reference_inplace(flat_param[chunk], flat_grad[chunk], {n: t[chunk] for n, t in flat.items()}, h)
            return
        if param.numel() <= CPU_CHUNK or not all(t.is_contiguous() for t in dense):
            _reference_into(targets, grad, writes, h, compute)
            return
        flat = {name: t.view(-1) for name, t in targets.items()}
        flat_grad = grad.view(-1)
        for start in range(0, param.numel(), CPU_CHUNK):
            chunk = slice(start, start + CPU_CHUNK)
            _reference_into({name: t[chunk] for name, t in flat.items()}, flat_grad[chunk], writes, h, compute)

    @staticmethod
    def _update_triton(launch, param, grad, tensors, writes, h):
        if param.numel() == 0:
            return
        dense = [param, grad, *tensors.values()]
        if all(t.is_contiguous() for t in dense):
            launch(param, grad, tensors, h)
            return
        # The kernel indexes flat memory: run on contiguous copies and write back.
        copies = {name: t.contiguous() for name, t in tensors.items()}
        param_copy = param.contiguous()
        launch(param_copy, grad.contiguous(), copies, h)
        targets = dict(tensors, param=param)
        for name in writes:
            source = param_copy if name == "param" else copies[name]
            if source is not targets[name]:
                targets[name].copy_(source)
