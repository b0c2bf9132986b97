"""Count what one optimizer step launches: Triton kernels, and torch ops that would each be a device
kernel on a GPU (so not views, allocations, or bookkeeping on the CPU step counters).

Kernels are counted by wrapping every Triton kernel of a generated module; torch ops by a
TorchDispatchMode that ignores the ops the Triton interpreter itself runs while a kernel executes.
"""

from __future__ import annotations

import contextlib
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

try:
    import triton
    from triton.runtime.interpreter import InterpretedFunction

    KERNEL_TYPES = (triton.runtime.JITFunction, InterpretedFunction)
except ImportError:  # pragma: no cover - triton is a test dependency
    KERNEL_TYPES = ()

# Ops that allocate or alias memory but launch nothing.
_NO_LAUNCH = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
    "lift_fresh", "_local_scalar_dense", "is_nonzero", "set_", "resize_",
}


class _Recorder(TorchDispatchMode):
    def __init__(self, host_tensors):
        super().__init__()
        self.host_ids = {id(t) for t in host_tensors}
        self.inside_kernel = 0
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside_kernel:
            return out
        name = func.overloadpacket.__name__
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func.is_view or name in _NO_LAUNCH or not tensors:
            return out
        # `state["step"] += 1` and the host scalar states live on the CPU next to a CUDA parameter.
        if all(id(t) in self.host_ids for t in tensors):
            return out
        self.ops[name] += 1
        return out


class _CountingKernel:
    def __init__(self, kernel, recorder, launches):
        self.kernel, self.recorder, self.launches = kernel, recorder, launches

    # Equal to the kernel it wraps: the engine keys its cached launch tables on the kernel.
    def __hash__(self):
        return hash(self.kernel)

    def __eq__(self, other):
        return self.kernel == (other.kernel if isinstance(other, _CountingKernel) else other)

    def __call__(self, *args, **kwargs):  # a @triton.jit helper called from inside a kernel
        return self.kernel(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.kernel, name)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.launches[self.kernel.__name__ if hasattr(self.kernel, "__name__") else repr(self.kernel)] += 1
            self.recorder.inside_kernel += 1
            try:
                return launch(*args, **kwargs)
            finally:
                self.recorder.inside_kernel -= 1

        return run


def host_tensors(opt) -> list:
    """The CPU scalars the optimizer keeps per tensor (the step count, host scalar states)."""
    found = []
    for state in opt.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.dim() == 0 and value.device.type == "cpu":
                found.append(value)
    return found


@contextlib.contextmanager
def count_launches(module, opt):
    """Within the block, count Triton kernel launches (by kernel) and device torch ops (by op)
    made by `opt`, an optimizer from the generated `module`. Yields (kernels, torch_ops) Counters."""
    kernels: Counter = Counter()
    recorder = _Recorder(host_tensors(opt))
    originals = {name: obj for name, obj in vars(module).items() if isinstance(obj, KERNEL_TYPES)}
    # The multi-tensor engine's dispatch tables hold the kernels themselves (_ENGINE_VARIANTS: a
    # spec whose kernels decide a condition on the step).
    tables = {name: dict(getattr(module, name)) for name in ("_VARIANTS", "_ENGINE_VARIANTS") if hasattr(module, name)}
    try:
        wrapped = {id(kernel): _CountingKernel(kernel, recorder, kernels) for kernel in originals.values()}
        for name, kernel in originals.items():
            setattr(module, name, wrapped[id(kernel)])
        for name, rows in tables.items():
            for key, (first, *rest) in rows.items():
                if id(first) in wrapped:
                    getattr(module, name)[key] = (wrapped[id(first)], *rest)
        with recorder:
            yield kernels, recorder.ops
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
        for name, rows in tables.items():
            getattr(module, name).update(rows)
