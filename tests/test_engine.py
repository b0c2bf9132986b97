"""The multi-tensor Triton engine of elementwise specs (kernels in the CPU interpreter): one launch
per bucket of tensors, equal to the per-tensor reference; device tables cached and rebuilt when a
tensor's storage changes; tensor hyperparameters without host reads (capturable); the precision
options against the float64 reference; launch arguments that do not change with hyperparameter
values (no recompilation). GPU-only checks (CUDA graph replay, the JIT cache) skip without CUDA."""

import os
import re
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from harness import make_grads, rel_error
from optdsl.compiler import load_module
from records import ALL_RECORDS

ROOT = Path(__file__).resolve().parent.parent
ENGINE_RECORDS = [r for r in ALL_RECORDS
                  if hasattr(__import__(f"generated.{r.spec}", fromlist=["_"]), "_kernel_hyperparameters")]
STAGED_SPECS = sorted({r.spec for r in ALL_RECORDS} - {r.spec for r in ENGINE_RECORDS})

# Awkward shapes in one group: one element, 0-dim, zero-size, a size that is no multiple of 16, two
# chunks (BLOCK_SIZE is 1024), and a transposed (non-contiguous) parameter; bfloat16 ones mixed in.
SHAPES = [((1,), torch.float32), ((), torch.float32), ((0, 3), torch.float32), ((5, 3), torch.float32),
          ((1040,), torch.float32), ((4, 8), torch.bfloat16), ((17,), torch.bfloat16), ((6, 16), "transposed")]
STEPS = 3
# One step's rounding (both sides restart every step from the reference's values): fp32 a few
# ulps relative to the tensor's largest value, bf16 two ulps.
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape, dtype in SHAPES:
        if dtype == "transposed":
            base = torch.randn(shape, generator=gen, dtype=torch.float64).float()
            params.append(base.t().requires_grad_())  # a non-contiguous leaf
        else:
            params.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_())
    return params


def _clone(params):
    out = []
    for p in params:
        q = p.detach().clone(memory_format=torch.preserve_format)
        out.append(q.requires_grad_())
    return out


def _set_grads(*param_lists, step, seed=0):
    grads = make_grads(param_lists[0], step, seed)
    for params in param_lists:
        for p, g in zip(params, grads):
            p.grad = g.clone()


def _states(opt, param):
    return {k: v for k, v in opt.state[param].items() if k != "step"}


@contextmanager
def _counting_launches(module):
    """Count kernel launches: every kernel in the module's dispatch table is wrapped."""
    counts = []
    saved = dict(module._VARIANTS)

    class Counter:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                counts.append((self.kernel, grid, args, kwargs))
                return self.kernel[grid](*args, **kwargs)
            return launch

    wrapped = {}
    for key, (kernel, touched, writes) in saved.items():
        wrapped.setdefault(kernel, Counter(kernel))
        module._VARIANTS[key] = (wrapped[kernel], touched, writes)
    try:
        yield counts
    finally:
        module._VARIANTS.update(saved)


def _module(record):
    return _module_of(record.spec)


def _module_of(spec):
    return __import__(f"generated.{spec}", fromlist=["_"])


CASES = [pytest.param(r, c, id=f"{r.spec}-{i}") for r in ENGINE_RECORDS for i, c in enumerate(r.configs)]


@pytest.mark.parametrize("record, config", CASES)
def test_one_launch_matches_per_tensor_reference(record, config):
    """Every elementwise record and config: the multi-tensor engine (awkward shapes, mixed dtypes in
    one group) equals the per-tensor reference, params and every state, after every step."""
    cls = record.generated
    ref_params = _params()
    tri_params = _clone(ref_params)
    ref = cls(ref_params, backend="torch", **config)
    tri = cls(tri_params, backend="triton", **config)
    for step in range(1, STEPS + 1):
        _set_grads(ref_params, tri_params, step=step)
        ref.step()
        tri.step()
        for i, (a, b) in enumerate(zip(tri_params, ref_params)):
            tol = TOLERANCE[b.dtype]
            assert rel_error(a, b) <= tol, f"step {step} param {i} {tuple(b.shape)}: {rel_error(a, b)}"
            sa, sb = _states(tri, a), _states(ref, b)
            assert set(sa) == set(sb)
            for name in sb:
                assert sa[name].dtype == sb[name].dtype, name
                err = rel_error(sa[name], sb[name])
                assert err <= TOLERANCE[torch.float32] * 10 if b.dtype == torch.float32 else err <= tol, \
                    f"step {step} param {i} state {name}: {err}"
                sa[name].copy_(sb[name])  # resync: each step's error is one step's rounding
            if "step" in tri.state[a]:
                assert float(tri.state[a]["step"]) == float(ref.state[b]["step"]) == step
            with torch.no_grad():
                a.copy_(b)


def test_launch_count_per_step():
    record = next(r for r in ENGINE_RECORDS if r.spec == "adamw")
    module, cls = _module(record), record.generated
    aligned = [torch.randn(n, requires_grad=True) for n in (16, 32, 1040, 2048, 48)]
    opt = cls(aligned, backend="triton")
    with _counting_launches(module) as launches:
        for step in range(1, 3):
            _set_grads(aligned, step=step)
            opt.step()
    assert len(launches) == 2, "one launch per step for five fp32 tensors"
    # Mixed dtypes, an odd size (no vector loads) and a second group: one launch per bucket.
    mixed = aligned + [torch.randn(16, dtype=torch.bfloat16, requires_grad=True), torch.randn(7, requires_grad=True)]
    other = [torch.randn(64, requires_grad=True)]
    opt = cls([{"params": mixed}, {"params": other, "lr": 0.1}], backend="triton")
    with _counting_launches(module) as launches:
        _set_grads(mixed + other, step=1)
        opt.step()
    assert len(launches) == 4  # group 1: fp32 aligned, bf16, fp32 odd size; group 2: one
    # Frozen params (grad None) and zero-size ones cost nothing; an empty group launches nothing.
    for p in mixed:
        p.grad = None
    with _counting_launches(module) as launches:
        opt.step()
    assert len(launches) == 1


def _table(opt):
    (entry,) = opt._tables.values()
    return entry


def test_tables_are_cached_and_rebuilt_when_storage_changes():
    record = next(r for r in ENGINE_RECORDS if r.spec == "adamw")
    cls = record.generated
    ref_params = [torch.randn(n, requires_grad=True) for n in (32, 1040)]
    tri_params = _clone(ref_params)
    ref, tri = cls(ref_params, backend="torch"), cls(tri_params, backend="triton")

    def step(n):
        _set_grads(ref_params, tri_params, step=n)
        ref.step()
        tri.step()
        for a, b in zip(tri_params, ref_params):
            assert rel_error(a, b) <= 2e-6
            for name in _states(ref, b):
                assert rel_error(tri.state[a][name], ref.state[b][name]) <= 2e-5

    step(1)
    step(2)
    grads = [p.grad for p in tri_params]
    first = _table(tri)
    # The same grads' storage again (as an allocator reusing memory gives): nothing is rebuilt.
    _set_grads(ref_params, step=3)
    for p, g, r in zip(tri_params, grads, ref_params):
        p.grad = g.copy_(r.grad)
    ref.step()
    tri.step()
    assert _table(tri)[3] is first[3]
    # `.data` replaced (what `module.to()` does): new addresses, rebuilt table, same results.
    for p in tri_params:
        p.data = p.data.clone()
    for name in ("exp_avg", "exp_avg_sq"):
        tri.state[tri_params[0]][name] = tri.state[tri_params[0]][name].clone()
    step(4)
    assert _table(tri)[0] != first[0]
    assert _table(tri)[2] is first[2], "same sizes: the chunk table is kept"
    # A param replaced in its group, and a group added later (its own step count).
    new_ref, new_tri = torch.randn(16, requires_grad=True), None
    new_tri = new_ref.detach().clone().requires_grad_()
    ref.add_param_group({"params": [new_ref], "lr": 0.01})
    tri.add_param_group({"params": [new_tri], "lr": 0.01})
    ref_params.append(new_ref)
    tri_params.append(new_tri)
    step(5)
    step(6)
    assert float(tri.state[new_tri]["step"]) == 2 and float(tri.state[tri_params[0]]["step"]) == 6
    replaced_ref = torch.randn(32, requires_grad=True)
    replaced_tri = replaced_ref.detach().clone().requires_grad_()
    ref.param_groups[0]["params"][0] = replaced_ref
    tri.param_groups[0]["params"][0] = replaced_tri
    ref_params[0], tri_params[0] = replaced_ref, replaced_tri
    step(7)
    assert float(tri.state[replaced_tri]["step"]) == 1


@contextmanager
def _no_host_reads():
    """Fail on any read of a tensor's value by the host (a device sync on a GPU)."""
    def refuse(*args, **kwargs):
        raise AssertionError("host read of a tensor value inside step()")
    names = ["item", "tolist", "__float__", "__int__", "__bool__", "__index__"]
    saved = {name: getattr(torch.Tensor, name) for name in names}
    for name in names:
        setattr(torch.Tensor, name, refuse)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


# RAdam's `if rho_t > 5` reads the step: its kernels decide it, so the host reads nothing either.
CAPTURABLE = ["adamw", "adam", "sgd", "lion", "adagrad", "rmsprop", "radam"]


@pytest.mark.parametrize("spec", CAPTURABLE)
def test_capturable_tensor_hyperparameters_without_host_reads(spec):
    """Over 8 steps (RAdam's rho_t passes 5 at step 6 with the default betas), params and every
    state equal the reference after each step."""
    record = next(r for r in ENGINE_RECORDS if r.spec == spec)
    cls = record.generated
    config = dict(record.configs[-1])
    tensor_config = {}
    for key, value in config.items():
        if key in ("lr", "weight_decay", "eps"):
            tensor_config[key] = torch.tensor(float(value))
        elif key == "betas":
            tensor_config[key] = tuple(torch.tensor(float(b)) for b in value)
        else:
            tensor_config[key] = value
    tensor_config.setdefault("lr", torch.tensor(float(cls([torch.zeros(1, requires_grad=True)]).defaults["lr"])))
    ref_params = [torch.randn(n, dtype=torch.float32, requires_grad=True) for n in (16, 33)]
    tri_params = _clone(ref_params)
    ref = cls(ref_params, backend="torch", **config)
    tri = cls(tri_params, backend="triton", capturable=True, **tensor_config)
    for step in range(1, 9):
        if step == 3:  # a scheduler changing the tensor in place
            tri.param_groups[0]["lr"].mul_(0.5)
            ref.param_groups[0]["lr"] = float(tri.param_groups[0]["lr"])
        _set_grads(ref_params, tri_params, step=step)
        ref.step()
        if step == 1:
            tri.step()  # the first step creates state; then no host read at all
        else:
            with _no_host_reads():
                tri.step()
        for a, b in zip(tri_params, ref_params):
            assert rel_error(a, b) <= 1e-5
            for name in _states(ref, b):
                assert rel_error(tri.state[a][name], ref.state[b][name]) <= 1e-5
    assert all(tri.state[p]["step"].device == p.device for p in tri_params if "step" in tri.state[p])


WARMUP_SPEC = textwrap.dedent('''
    optimizer Warmup """Conditions on the step: an `if`/`elif` chain, a state that one branch assigns."""

    hyper lr = 0.1
    hyper warmup = 3
    hyper nesterov = false

    state buf = 0
    state peak = 0

    update {
        if step <= warmup {
            s = lr * step / warmup
            buf = grad
        } elif step > 2 * warmup {
            s = lr / 2
            peak = max(peak, abs(grad))
        } else {
            s = lr
        }
        if nesterov {
            param = param - s * (grad + buf)
        } else {
            param = param - s * buf - 0.01 * peak
        }
    }
''')


@pytest.mark.parametrize("nesterov", [False, True])
def test_conditions_on_the_step_are_decided_in_the_kernel(tmp_path, nesterov):
    """Variants that differ only in conditions on the step share one kernel, which selects the
    branch per program: the host picks the kernel by `nesterov` alone, reads nothing (capturable,
    tensor lr), creates every state any branch touches, and matches the reference, which decides
    on the host, through all three branches (steps 1-3, 4-6, 7-9)."""
    path = tmp_path / "warmup.opt"
    path.write_text(WARMUP_SPEC)
    module = load_module(path)
    assert [k.__name__ for k, _, _ in module._ENGINE_VARIANTS.values()] == \
        ["_warmup_kernel_nesterov", "_warmup_kernel_not_nesterov"]
    ref_params = [torch.randn(n, requires_grad=True) for n in (5, 40)]
    tri_params = _clone(ref_params)
    ref = module.Warmup(ref_params, backend="torch", nesterov=nesterov)
    tri = module.Warmup(tri_params, backend="triton", capturable=True, nesterov=nesterov, lr=torch.tensor(0.1))
    for step in range(1, 10):
        _set_grads(ref_params, tri_params, step=step)
        ref.step()
        if step == 1:
            tri.step()
        else:
            with _no_host_reads():
                tri.step()
        for a, b in zip(tri_params, ref_params):
            assert rel_error(a, b) <= 1e-5, step
            assert set(_states(tri, a)) == set(_states(ref, b)) == {"buf", "peak"}
            for name in _states(ref, b):
                assert rel_error(tri.state[a][name], ref.state[b][name]) <= 1e-5, (step, name)


def test_capturable_refuses_a_kernel_chosen_on_the_host():
    """A tensor hyperparameter that the host must read (to pick the kernel, or to start a state)
    is refused under capturable=True. A condition on the step is no such case: the kernels decide
    it (RAdam's `rho_t > 5`), even with tensor betas."""
    p = torch.randn(4, requires_grad=True)
    p.grad = torch.ones(4)
    refused = [("sgd", dict(lr=0.1, momentum=torch.tensor(0.9)), "momentum"),  # `if momentum != 0`
               ("rmsprop", dict(momentum=torch.tensor(0.9)), "momentum"),
               ("adagrad", dict(initial_accumulator_value=torch.tensor(0.1)), "initial_accumulator_value")]
    for spec, config, name in refused:
        cls = next(r for r in ENGINE_RECORDS if r.spec == spec).generated
        opt = cls([p], backend="triton", capturable=True, **config)
        with pytest.raises(RuntimeError, match=f"capturable: {name} is read on the host"):
            opt.step()
    radam = _module_of("radam")
    assert radam.RAdam([p], backend="triton", capturable=True).step() is None
    betas = (torch.tensor(0.9), torch.tensor(0.999))
    opt = radam.RAdam([p], backend="triton", capturable=True, betas=betas, decoupled_weight_decay=True)
    opt.step()
    with _no_host_reads():
        opt.step()
    assert float(opt.state[p]["step"]) == 2
    # The reference still decides `rho_t > 5` on the host, so the engine has its own dispatch.
    assert radam._engine_variant({"decoupled_weight_decay": True}) == (True,)


def test_hyperparameter_values_never_change_the_launch_signature():
    """What Triton's JIT cache keys on (argument types, constexprs) stays the same when lr, betas,
    weight decay and the step change: the values travel in device memory. (The interpreter has no
    JIT cache; the GPU test below checks the cache itself.)"""
    record = next(r for r in ENGINE_RECORDS if r.spec == "adamw")
    module, cls = _module(record), record.generated
    params = [torch.randn(n, requires_grad=True) for n in (32, 1040)]
    opt = cls(params, backend="triton", lr=torch.tensor(0.01))
    with _counting_launches(module) as launches:
        for step in range(1, 5):
            group = opt.param_groups[0]
            group["lr"] = torch.tensor(0.01 * step) if step % 2 else 0.02 * step
            group["betas"] = (0.9 - 0.01 * step, 0.999)
            group["weight_decay"] = 0.01 * step
            for p, g in zip(params, make_grads(params, step)):
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)  # grads kept between steps (zero_grad(set_to_none=False))
            opt.step()

    def signature(launch):
        kernel, grid, args, kwargs = launch
        return kernel, tuple((a.dtype, a.device) if isinstance(a, torch.Tensor) else a for a in args), kwargs
    assert len({repr(signature(launch)) for launch in launches}) == 1
    # The same table and buffer tensors every step: nothing is allocated per step. (New grad
    # storage each step, as set_to_none can give, rebuilds the table: see the test above.)
    assert len({tuple(id(a) for a in launch[2]) for launch in launches}) == 1


PRECISION = [
    (param_dtype, master, state_dtype)
    for param_dtype in (torch.float32, torch.bfloat16, torch.float16)
    for master in (False, True)
    for state_dtype in (None, torch.bfloat16)
    if not (master and param_dtype == torch.float32)
]
EPS = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("spec", ["adamw", "sgd"])
@pytest.mark.parametrize("param_dtype, master, state_dtype", PRECISION,
                         ids=[f"{str(p)[6:]}-{'master' if m else 'plain'}-{str(s)[6:] if s else 'default'}" for p, m, s in PRECISION])
def test_precision_matrix_against_float64(spec, param_dtype, master, state_dtype):
    """Params fp32/bf16/fp16, with and without float32 master weights, states in the default dtype
    (float32 for low-precision params) or bfloat16: the engine against the float64 reference over
    STEPS steps, each tensor within a bound from the dtypes it is stored in."""
    record = next(r for r in ENGINE_RECORDS if r.spec == spec)
    cls = record.generated
    config = dict(record.configs[-1])
    gen = torch.Generator().manual_seed(1)
    exact = [torch.randn(n, generator=gen, dtype=torch.float64).to(param_dtype).double().requires_grad_() for n in (64, 1040)]
    params = [p.detach().to(param_dtype).requires_grad_() for p in exact]
    ref = cls(exact, backend="torch", **config)
    opt = cls(params, backend="triton", master_weights=master, state_dtype=state_dtype, **config)
    for step in range(1, STEPS + 1):
        grads = make_grads(exact, step)
        for p, q, g in zip(exact, params, grads):
            p.grad, q.grad = g.to(param_dtype).double(), g.to(param_dtype)
        ref.step()
        opt.step()
    stored_state = state_dtype or torch.float32
    for p, q in zip(exact, params):
        # One ulp of x is at most 2 * EPS * |x| (Triton's interpreter truncates to bfloat16/float16
        # where the GPU rounds to nearest). The param is rounded every step, or once from its
        # master copy; the states every step, and they see the rounded param (weight decay).
        param_rounding = 2 * EPS[param_dtype] * (1 if master else STEPS)
        state_bound = 16 * STEPS * EPS[stored_state] + (0 if master else param_rounding)
        param_bound = param_rounding + state_bound
        assert q.dtype == param_dtype
        assert rel_error(q, p) <= param_bound, (rel_error(q, p), param_bound)
        for name, value in _states(ref, p).items():
            assert opt.state[q][name].dtype == stored_state, name
            assert rel_error(opt.state[q][name], value) <= state_bound, (name, rel_error(opt.state[q][name], value))
        if master and param_dtype != torch.float32:
            assert opt.state[q]["master_param"].dtype == torch.float32
            assert rel_error(opt.state[q]["master_param"], p) <= state_bound + 4 * STEPS * EPS[torch.float32]
        else:
            assert "master_param" not in opt.state[q]


def test_state_dtypes_survive_state_dict_and_both_backends_agree():
    cls = next(r for r in ENGINE_RECORDS if r.spec == "adamw").generated
    p = torch.randn(16, dtype=torch.bfloat16, requires_grad=True)
    for backend in ("torch", "triton"):
        opt = cls([p], backend=backend, master_weights=True, state_dtype={"exp_avg_sq": torch.bfloat16})
        p.grad = torch.randn(16, dtype=torch.bfloat16)
        opt.step()
        state = opt.state[p]
        assert (state["exp_avg"].dtype, state["exp_avg_sq"].dtype, state["master_param"].dtype) == \
            (torch.float32, torch.bfloat16, torch.float32)
        again = cls([p], backend=backend, master_weights=True, state_dtype={"exp_avg_sq": torch.bfloat16})
        again.load_state_dict(opt.state_dict())  # torch would cast every state to bfloat16
        loaded = again.state[p]
        assert (loaded["exp_avg"].dtype, loaded["exp_avg_sq"].dtype, loaded["master_param"].dtype) == \
            (torch.float32, torch.bfloat16, torch.float32)
        assert torch.equal(loaded["master_param"], state["master_param"])
    with pytest.raises(ValueError, match="state_dtype"):
        cls([p], state_dtype={"nope": torch.float32})
    with pytest.raises(ValueError, match="state_dtype"):
        cls([p], state_dtype=torch.int8)


def test_staged_specs_launch_per_bucket_except_row_and_column_reductions():
    # Specs with reductions run the staged runtime. Every variant whose reductions are per tensor or
    # global launches over a bucket of tensors at once (tests/test_multi_tensor_staged.py); those
    # that reduce per row or column launch per tensor. Listed here so a change to that is deliberate.
    assert STAGED_SPECS == sorted(["adafactor", "adamp", "adamw_clip_global", "adamw_clip_tensor", "agr_adamw",
                                   "agr_adan", "gc_adam", "gc_sgd", "lamb", "lars", "mars_adamw", "nadam", "sgdp",
                                   "sps", "sps_max", "sps_momentum"])
    per_tensor = sorted(spec for spec in STAGED_SPECS
                        if any(row[3] is None for row in _module_of(spec)._VARIANTS.values()))
    assert per_tensor == ["adafactor", "adamp", "gc_adam", "gc_sgd", "sgdp"]
    assert all(any(row[3] is not None for row in _module_of(spec)._VARIANTS.values()) for spec in STAGED_SPECS)


# ---------------------------------------------------------------------------------------------
# GPU checks: compiled for sm_90 here (no GPU needed); run, replayed and cached only on CUDA.

COMPILE_CHECK = textwrap.dedent('''
    import os, re, sys, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, sys.argv[1])
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    import importlib
    failures = []
    for spec in sys.argv[2:]:
        module = importlib.import_module("generated." + spec)
        kernels = {kernel for kernel, _, _ in module._VARIANTS.values()}
        for kernel in sorted(kernels, key=lambda k: k.__name__):
            for dtypes, master, aligned in [((tl.float32,) * 16, False, True), ((tl.bfloat16,) * 2 + (tl.float32,) * 14, True, False)]:
                source = triton.compiler.ASTSource(fn=kernel, signature={
                    "tensors_ptr": "*i64", "chunks_ptr": "*i64", "hypers_ptr": "*fp64", "DTYPES": "constexpr",
                    "MASTER_WEIGHTS": "constexpr", "ALIGNED": "constexpr", "BLOCK_SIZE": "constexpr"},
                    constexprs={"DTYPES": dtypes, "MASTER_WEIGHTS": master, "ALIGNED": aligned, "BLOCK_SIZE": module.BLOCK_SIZE})
                ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
                vector = bool(re.search(r"(ld|st)\\.global(\\.\\w+)*\\.v[24]", ptx))
                if vector != aligned:
                    failures.append((spec, kernel.__name__, aligned))
    print("FAILURES", failures)
''')


def _can_compile_for_sm90():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends.nvidia import compiler  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _can_compile_for_sm90(), reason="Triton's NVIDIA backend is not installed")
def test_kernels_compile_for_sm90_with_vector_loads_when_aligned():
    """Every multi-tensor kernel compiles to PTX for an H100 (sm_90) without a GPU; aligned
    buckets get 16-byte vector loads/stores, unaligned ones not. (Run outside the interpreter.)"""
    specs = sorted({r.spec for r in ENGINE_RECORDS})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK, str(ROOT), *specs], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FAILURES []" in result.stdout, result.stdout[-3000:]


JIT_KEYS = textwrap.dedent('''
    import os, sys, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, sys.argv[1])
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature
    import generated.adamw as module
    # Triton's own argument binder for an H100, which computes the specialization that keys its
    # JIT cache; launches are recorded instead of run (no GPU here).
    backend = make_backend(GPUTarget("cuda", 90, 32))
    keys = []
    class Recorder:
        def __init__(self, kernel):
            self.binder = create_function_from_signature(kernel.signature, kernel.params, backend)
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                _, specialization, options = self.binder(*args, **kwargs)
                keys.append(str(specialization) + str(options))
            return launch
    for key, (kernel, touched, writes) in list(module._VARIANTS.items()):
        module._VARIANTS[key] = (Recorder(kernel), touched, writes)
    params = [torch.randn(n, requires_grad=True) for n in (32, 1040)]
    opt = module.AdamW(params, backend="torch")
    opt.backend = "triton"
    os.environ["TRITON_INTERPRET"] = "1"  # lets the CPU tensors take the Triton path
    for step in range(1, 6):
        group = opt.param_groups[0]
        group["lr"] = torch.tensor(0.01 * step) if step % 2 else 0.02 * step
        group["betas"] = (0.9 - 0.01 * step, 0.99 + 0.001 * step)
        group["weight_decay"] = 0.1 * step
        group["eps"] = 10.0 ** -step
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    print("KEYS", len(keys), len(set(keys)))
''')


@pytest.mark.skipif(not _can_compile_for_sm90(), reason="Triton's NVIDIA backend is not installed")
def test_new_hyperparameter_values_keep_the_jit_cache_key():
    """Triton's JIT cache key for a launch (argument specialization and options, as its binder
    computes it for an H100) is the same for every step while lr (number or tensor), betas,
    weight decay, eps and the step change: no recompilation."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", JIT_KEYS, str(ROOT)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "KEYS 5 1" in result.stdout, result.stdout[-2000:]


cuda = pytest.mark.skipif(not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1",
                          reason="needs a CUDA GPU and compiled (not interpreted) kernels")


@cuda
def test_cuda_graph_capture_and_replay():  # pragma: no cover - GPU only
    cls = next(r for r in ENGINE_RECORDS if r.spec == "adamw").generated
    params = [torch.randn(n, device="cuda", requires_grad=True) for n in (1024, 4096, 7)]
    eager_params = [p.detach().clone().requires_grad_() for p in params]
    lr = torch.tensor(0.01, device="cuda")
    opt = cls(params, lr=lr, capturable=True)
    eager = cls(eager_params, lr=0.01)
    grads = [torch.randn_like(p) for p in params]
    for p, q, g in zip(params, eager_params, grads):
        p.grad, q.grad = g.clone(), g.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            opt.step()
            eager.step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for step in range(3):
        lr.fill_(0.01 / (step + 1))
        eager.param_groups[0]["lr"] = 0.01 / (step + 1)
        graph.replay()
        eager.step()
    torch.cuda.synchronize()
    for p, q in zip(params, eager_params):
        assert rel_error(p, q) <= 1e-5
        assert float(opt.state[p]["step"]) == float(eager.state[q]["step"])


@cuda
def test_new_hyperparameter_values_do_not_recompile():  # pragma: no cover - GPU only
    record = next(r for r in ENGINE_RECORDS if r.spec == "adamw")
    module, cls = _module(record), record.generated
    params = [torch.randn(n, device="cuda", requires_grad=True) for n in (1024, 4096)]
    opt = cls(params)
    kernel = module._VARIANTS[(False,)][0]

    def compiled():
        # Triton 3.x keeps compiled kernels per device in device_caches[device][0] (a dict).
        return sum(len(cache[0]) for cache in kernel.device_caches.values())

    for step in range(1, 6):
        opt.param_groups[0]["lr"] = 1e-3 * step
        opt.param_groups[0]["betas"] = (0.9 - 0.01 * step, 0.99)
        opt.param_groups[0]["weight_decay"] = 0.1 * step
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
        if step == 1:
            after_first = compiled()
    assert compiled() == after_first == 1
