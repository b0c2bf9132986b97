# PROTOTYPE (bench/prototypes, not generated): generated/sgd.py (optdsl 0.1.0, specs/sgd.opt) with
# its CPU reference path hand-edited to show what the template/printer change in
# docs/performance.md ("CPU reference path") buys. Only `_reference_fused`, `_reference_inplace`,
# `MODE` and `SGD._update_reference` differ from generated/sgd.py; everything else is verbatim.
# MODE = "generated" (unchanged path), "fused" (scalar-coefficient ops fused, zero terms skipped,
# still functional + copy-back, chunked) or "inplace" (fused ops written straight into param and
# state, chunk by chunk; fp32/fp64 contiguous tensors only, others fall back to "fused").
# spec sha256: ca3f38af39ff185aaefd86f1532ac65997bce51e704a097d44ba85c128565221
"""Stochastic gradient descent (Robbins & Monro, 1951) with momentum (Polyak, 1964)
and Nesterov momentum (Sutskever et al., ICML 2013).

Mirrors torch.optim.SGD: L2 weight decay added to the gradient, a momentum buffer that starts as
the first gradient, `dampening` on later steps, and the buffer kept only when momentum != 0.

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


# ---------------------------------------------------------------------------------------------
# Reference implementation: the update as written in the spec, in plain PyTorch.


def _reference(param, grad, state, h):
    """One SGD step for one tensor; returns the new values of everything the rule assigns.

    `param`, `grad` and the tensors in `state` arrive in the compute dtype (float32, or float64
    for float64 parameters); `h` holds the hyperparameters, `step` and the `fresh_*` flags.
    """
    lr = h["lr"]
    momentum = h["momentum"]
    dampening = h["dampening"]
    weight_decay = h["weight_decay"]
    nesterov = h["nesterov"]
    maximize = h["maximize"]
    fresh_momentum_buffer = h["fresh_momentum_buffer"]
    momentum_buffer = state.get("momentum_buffer")
    g = (-grad if maximize else grad) + weight_decay * param
    if momentum != 0:
        if fresh_momentum_buffer:
            momentum_buffer = g
        else:
            momentum_buffer = momentum * momentum_buffer + (1 - dampening) * g
        if nesterov:
            g = g + momentum * momentum_buffer
        else:
            g = momentum_buffer
    param = param - lr * g
    return {"param": param, "momentum_buffer": momentum_buffer}


MODE = "inplace"


def _reference_fused(param, grad, state, h):
    """The same rule with `a + c*b` (c a host scalar) as one torch.add(a, b, alpha=c), and terms
    whose host coefficient is 0 at run time skipped (weight_decay * param at weight_decay = 0)."""
    lr = h["lr"]
    momentum = h["momentum"]
    dampening = h["dampening"]
    weight_decay = h["weight_decay"]
    nesterov = h["nesterov"]
    maximize = h["maximize"]
    momentum_buffer = state.get("momentum_buffer")
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = torch.add(g, param, alpha=weight_decay)
    if momentum != 0:
        if h["fresh_momentum_buffer"]:
            momentum_buffer = g
        else:
            momentum_buffer = torch.add(momentum_buffer * momentum, g, alpha=1 - dampening)
        g = torch.add(g, momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param = torch.add(param, g, alpha=-lr)
    return {"param": param, "momentum_buffer": momentum_buffer}


def _reference_inplace(param, grad, state, h):
    """`_reference_fused` with the last assignment of param and of each state written in place
    into the target tensors (what torch.optim's for-loop does); returns nothing."""
    lr = h["lr"]
    momentum = h["momentum"]
    dampening = h["dampening"]
    weight_decay = h["weight_decay"]
    nesterov = h["nesterov"]
    maximize = h["maximize"]
    g = -grad if maximize else grad
    if weight_decay != 0:
        g = torch.add(g, param, alpha=weight_decay)
    if momentum != 0:
        momentum_buffer = state["momentum_buffer"]
        if h["fresh_momentum_buffer"]:
            momentum_buffer.copy_(g)
        else:
            momentum_buffer.mul_(momentum).add_(g, alpha=1 - dampening)
        g = torch.add(g, momentum_buffer, alpha=momentum) if nesterov else momentum_buffer
    param.add_(g, alpha=-lr)


# ---------------------------------------------------------------------------------------------
# Triton kernels: one program per BLOCK_SIZE elements, math in float32. Scalars that depend only
# on hyperparameters and the step are computed once on the host by the launcher.


@_jit
def _sgd_kernel_momentum_ne_0_fresh_momentum_buffer_nesterov(
    param_ptr, grad_ptr, momentum_buffer_ptr,
    momentum, weight_decay, c0, c1,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    tmp0 = c0*grad + param*weight_decay
    momentum_buffer_new = tmp0
    g = momentum*momentum_buffer_new + tmp0
    tl.store(param_ptr + offsets, (c1*g + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(momentum_buffer_ptr + offsets, (momentum_buffer_new).to(momentum_buffer_ptr.dtype.element_ty), mask=mask)


def _sgd_launch_momentum_ne_0_fresh_momentum_buffer_nesterov(param, grad, state, h):
    lr = h["lr"]
    maximize = h["maximize"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = -lr
    momentum = h["momentum"]
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _sgd_kernel_momentum_ne_0_fresh_momentum_buffer_nesterov[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["momentum_buffer"],
        momentum, weight_decay, c0, c1,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _sgd_kernel_momentum_ne_0_fresh_momentum_buffer_not_nesterov(
    param_ptr, grad_ptr, momentum_buffer_ptr,
    weight_decay, c0, c1,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    momentum_buffer_new = c0*grad + param*weight_decay
    tl.store(param_ptr + offsets, (c1*momentum_buffer_new + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(momentum_buffer_ptr + offsets, (momentum_buffer_new).to(momentum_buffer_ptr.dtype.element_ty), mask=mask)


def _sgd_launch_momentum_ne_0_fresh_momentum_buffer_not_nesterov(param, grad, state, h):
    lr = h["lr"]
    maximize = h["maximize"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = -lr
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _sgd_kernel_momentum_ne_0_fresh_momentum_buffer_not_nesterov[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["momentum_buffer"],
        weight_decay, c0, c1,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _sgd_kernel_momentum_ne_0_not_fresh_momentum_buffer_nesterov(
    param_ptr, grad_ptr, momentum_buffer_ptr,
    momentum, weight_decay, c0, c1, c2,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    momentum_buffer = tl.load(momentum_buffer_ptr + offsets, mask=mask).to(tl.float32)
    tmp0 = c0*grad + param*weight_decay
    g = tmp0
    momentum_buffer_new = c1*g + momentum*momentum_buffer
    g_2 = momentum*momentum_buffer_new + tmp0
    tl.store(param_ptr + offsets, (c2*g_2 + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(momentum_buffer_ptr + offsets, (momentum_buffer_new).to(momentum_buffer_ptr.dtype.element_ty), mask=mask)


def _sgd_launch_momentum_ne_0_not_fresh_momentum_buffer_nesterov(param, grad, state, h):
    lr = h["lr"]
    dampening = h["dampening"]
    maximize = h["maximize"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = 1 - dampening
    c2 = -lr
    momentum = h["momentum"]
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _sgd_kernel_momentum_ne_0_not_fresh_momentum_buffer_nesterov[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["momentum_buffer"],
        momentum, weight_decay, c0, c1, c2,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _sgd_kernel_momentum_ne_0_not_fresh_momentum_buffer_not_nesterov(
    param_ptr, grad_ptr, momentum_buffer_ptr,
    momentum, weight_decay, c0, c1, c2,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    momentum_buffer = tl.load(momentum_buffer_ptr + offsets, mask=mask).to(tl.float32)
    g = c0*grad + param*weight_decay
    momentum_buffer_new = c1*g + momentum*momentum_buffer
    tl.store(param_ptr + offsets, (c2*momentum_buffer_new + param).to(param_ptr.dtype.element_ty), mask=mask)
    tl.store(momentum_buffer_ptr + offsets, (momentum_buffer_new).to(momentum_buffer_ptr.dtype.element_ty), mask=mask)


def _sgd_launch_momentum_ne_0_not_fresh_momentum_buffer_not_nesterov(param, grad, state, h):
    lr = h["lr"]
    dampening = h["dampening"]
    maximize = h["maximize"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = 1 - dampening
    c2 = -lr
    momentum = h["momentum"]
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _sgd_kernel_momentum_ne_0_not_fresh_momentum_buffer_not_nesterov[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad, state["momentum_buffer"],
        momentum, weight_decay, c0, c1, c2,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


@_jit
def _sgd_kernel_not_momentum_ne_0(
    param_ptr, grad_ptr,
    weight_decay, c0, c1,
    n_elements,
    BLOCK_SIZE: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
    mask = offsets < n_elements
    param = tl.load(param_ptr + offsets, mask=mask).to(tl.float32)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(tl.float32)
    g = c0*grad + param*weight_decay
    tl.store(param_ptr + offsets, (c1*g + param).to(param_ptr.dtype.element_ty), mask=mask)


def _sgd_launch_not_momentum_ne_0(param, grad, state, h):
    lr = h["lr"]
    maximize = h["maximize"]
    c0 = (-1.0 if maximize else 1.0)
    c1 = -lr
    weight_decay = h["weight_decay"]
    n_elements = param.numel()
    _sgd_kernel_not_momentum_ne_0[(triton.cdiv(n_elements, BLOCK_SIZE),)](
        param, grad,
        weight_decay, c0, c1,
        n_elements,
        BLOCK_SIZE=BLOCK_SIZE,
    )


# ---------------------------------------------------------------------------------------------
# Dispatch: each `if` in the spec is decided per tensor on the host and selects a kernel.


def _variant(h):
    momentum = h["momentum"]
    nesterov = h["nesterov"]
    fresh_momentum_buffer = h["fresh_momentum_buffer"]
    return (bool((momentum != 0)), bool(fresh_momentum_buffer), bool(nesterov))


# variant -> (launcher, states it touches, tensors it writes)
_VARIANTS = {
    (True, True, True): (_sgd_launch_momentum_ne_0_fresh_momentum_buffer_nesterov, ("momentum_buffer",), ("param", "momentum_buffer")),
    (True, True, False): (_sgd_launch_momentum_ne_0_fresh_momentum_buffer_not_nesterov, ("momentum_buffer",), ("param", "momentum_buffer")),
    (True, False, True): (_sgd_launch_momentum_ne_0_not_fresh_momentum_buffer_nesterov, ("momentum_buffer",), ("param", "momentum_buffer")),
    (True, False, False): (_sgd_launch_momentum_ne_0_not_fresh_momentum_buffer_not_nesterov, ("momentum_buffer",), ("param", "momentum_buffer")),
    (False, True, True): (_sgd_launch_not_momentum_ne_0, (), ("param",)),
    (False, True, False): (_sgd_launch_not_momentum_ne_0, (), ("param",)),
    (False, False, True): (_sgd_launch_not_momentum_ne_0, (), ("param",)),
    (False, False, False): (_sgd_launch_not_momentum_ne_0, (), ("param",)),
}


def _init_state(name, param, h):
    if name == "momentum_buffer":
        return torch.zeros_like(param, memory_format=torch.preserve_format)
    raise KeyError(name)


def _hyperparameters(group):
    """The scalars the rule reads, from one param group (tuples destructured, tensors read)."""
    return {
        "lr": _as_float(group["lr"]),
        "momentum": _as_float(group["momentum"]),
        "dampening": _as_float(group["dampening"]),
        "weight_decay": _as_float(group["weight_decay"]),
        "nesterov": bool(group["nesterov"]),
        "maximize": bool(group["maximize"]),
    }


def _validate(group):
    """Raise ValueError naming the first invalid hyperparameter of a param group."""
    lr = _as_float(group["lr"], "lr")
    momentum = _as_float(group["momentum"], "momentum")
    dampening = _as_float(group["dampening"], "dampening")
    weight_decay = _as_float(group["weight_decay"], "weight_decay")
    if not isinstance(group["nesterov"], bool):
        raise ValueError(f"Invalid nesterov: expected True or False, got {group['nesterov']!r}")
    if not isinstance(group["maximize"], bool):
        raise ValueError(f"Invalid maximize: expected True or False, got {group['maximize']!r}")
    if not (lr >= 0):
        raise ValueError(f"Invalid lr: {group['lr']!r} (requires lr >= 0)")
    if not (momentum >= 0):
        raise ValueError(f"Invalid momentum: {group['momentum']!r} (requires momentum >= 0)")
    if not (weight_decay >= 0):
        raise ValueError(f"Invalid weight_decay: {group['weight_decay']!r} (requires weight_decay >= 0)")
    nesterov = group["nesterov"]
    if not (not nesterov or momentum > 0 and dampening == 0):
        raise ValueError(f"Invalid nesterov: {group['nesterov']!r} (requires not nesterov or momentum > 0 and dampening == 0)")


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


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent (Robbins & Monro, 1951) with momentum (Polyak, 1964)
    and Nesterov momentum (Sutskever et al., ICML 2013).

    Mirrors torch.optim.SGD: L2 weight decay added to the gradient, a momentum buffer that starts as
    the first gradient, `dampening` on later steps, and the buffer kept only when momentum != 0.

    Args:
        params: iterable of parameters or dicts defining parameter groups.
        lr: default 0.001; requires lr >= 0.
        momentum: default 0; requires momentum >= 0.
        dampening: default 0.
        weight_decay: default 0; requires weight_decay >= 0.
        nesterov: default False; requires not nesterov or momentum > 0 and dampening == 0.
        maximize: default False.
        backend: "auto" (Triton for CUDA tensors, the PyTorch reference otherwise), "triton"
            or "torch".

    State per parameter: `momentum_buffer` (no step count).
    """

    def __init__(
        self,
        params,
        lr=0.001,
        momentum=0,
        dampening=0,
        weight_decay=0,
        nesterov=False,
        maximize=False,
        *,
        backend="auto",
    ):
        if backend not in ("auto", "triton", "torch"):
            raise ValueError(f"Invalid backend: {backend!r} (expected 'auto', 'triton' or 'torch')")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
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
            group.setdefault("momentum", self.defaults["momentum"])
            group.setdefault("dampening", self.defaults["dampening"])
            group.setdefault("weight_decay", self.defaults["weight_decay"])
            group.setdefault("nesterov", self.defaults["nesterov"])
            group.setdefault("maximize", self.defaults["maximize"])

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
            raise RuntimeError("SGD does not support sparse gradients")
        h = dict(hyperparameters)  # the spec keeps no step count (`state step = none`)
        h["fresh_momentum_buffer"] = "momentum_buffer" not in state
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
        global _reference
        compute = torch.float64 if param.dtype == torch.float64 else torch.float32
        dense = [param, grad, *tensors.values()]
        if MODE == "inplace" and all(t.dtype == compute and t.is_contiguous() for t in dense):
            # In place on chunk views: temporaries (weight decay, nesterov) stay cache-sized.
            if param.numel() <= CPU_CHUNK:
                _reference_inplace(param, grad, tensors, h)
                return
            flat = {name: t.view(-1) for name, t in tensors.items()}
            flat_param, flat_grad = param.view(-1), grad.view(-1)
            for start in range(0, param.numel(), CPU_CHUNK):
                chunk = slice(start, start + CPU_CHUNK)
                _reference_inplace(flat_param[chunk], flat_grad[chunk], {n: t[chunk] for n, t in flat.items()}, h)
            return
        original = _reference
        if MODE != "generated":
            _reference = _reference_fused
        try:
            targets = dict(tensors, param=param)
            if param.numel() <= CPU_CHUNK or not all(t.is_contiguous() for t in dense):
                _reference_into(targets, grad, writes, h, compute)
                return
            flat = {name: t.view(-1) for name, t in targets.items()}
            flat_grad = grad.view(-1)
            for start in range(0, param.numel(), CPU_CHUNK):
                chunk = slice(start, start + CPU_CHUNK)
                _reference_into({name: t[chunk] for name, t in flat.items()}, flat_grad[chunk], writes, h, compute)
        finally:
            _reference = original

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
