"""Multi-tensor launches of the staged runtime (kernels in the CPU interpreter).

A spec with global reductions (clipping by the global norm, Polyak steps) computes every tensor's
contribution in one launch per bucket. A variant whose reductions are per tensor (LAMB, LARS,
per-tensor clipping, AGR) or global, or that has none (NAdam, the 1-D branch of AdamP or GC-Adam),
steps all its tensors in one launch per pass per bucket, torch finishing the per-tensor values of
all of them at once. A bucket: tensors with the same device, dtypes, 16-byte alignment and the
host values the launch reads (so tensors at different step counts, or in groups with different
hyperparameters, launch apart). Checked here: equal to the per-tensor reference with awkward
shapes, mixed dtypes, strided and complex params and a group added mid-run; the launch counts;
launch tables cached across steps and rebuilt when storage changes; every such kernel compiles
for an H100 (sm_90) with vector loads in aligned buckets.
"""

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from harness import make_grads, rel_error
from launches import count_launches
from records import ALL_RECORDS

ROOT = Path(__file__).resolve().parent.parent


def _module(spec):
    return importlib.import_module(f"generated.{spec}")


def _has_multi_tensor_update(spec):
    variants = _module(spec)._VARIANTS.values()
    return any(len(row) == 4 and row[3] is not None for row in variants)


MULTI_RECORDS = [r for r in ALL_RECORDS if _has_multi_tensor_update(r.spec)]
CASES = [pytest.param(r, c, id=f"{r.spec}-{i}") for r in MULTI_RECORDS for i, c in enumerate(r.configs)]

# One group of awkward tensors: one element, 0-dim, zero-size, no multiple of 16, two chunks
# (BLOCK_SIZE 1024), 2-D ones (the row/column branch of AdamP or GC-Adam), bfloat16, a transposed
# (strided) one and a complex one.
SHAPES = [((1,), torch.float32), ((), torch.float32), ((0, 3), torch.float32), ((5, 3), torch.float32),
          ((1040,), torch.float32), ((64,), torch.float32), ((17,), torch.bfloat16), ((32,), torch.bfloat16),
          ((6, 16), "transposed"), ((4, 3), torch.complex64)]
STEPS = 3
# One step's rounding: both sides restart every step from the reference's values.
TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.complex64: 2e-6}
STATE_TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 1.6e-2, torch.complex64: 2e-5}


def _params(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape, dtype in shapes:
        if dtype == "transposed":
            params.append(torch.randn(shape, generator=gen, dtype=torch.float64).float().t().requires_grad_())
        else:
            params.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_())
    return params


def _clone(params):
    return [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


def _step_both(record, ref, tri, ref_params, tri_params, step):
    """Give both optimizers the same gradients (and loss) and step them."""
    grads = make_grads(ref_params, step)
    for params in (ref_params, tri_params):
        for p, g in zip(params, grads):
            p.grad = g.clone()
    kwargs = {"loss": torch.tensor(1.5 + 0.25 * step)} if record.loss_fn is not None else {}
    ref.step(**kwargs)
    tri.step(**kwargs)


def _compare_and_resync(ref, tri, ref_params, tri_params, where):
    for i, (a, b) in enumerate(zip(tri_params, ref_params)):
        err = rel_error(a, b)
        assert err <= TOLERANCE[b.dtype], f"{where} param {i} {tuple(b.shape)} {b.dtype}: {err}"
        sa, sb = tri.state[a], ref.state[b]
        assert set(sa) == set(sb), f"{where} param {i}"
        for name, value in sb.items():
            if name == "step":
                assert float(sa[name]) == float(value), f"{where} param {i} step"
                continue
            assert sa[name].dtype == value.dtype, f"{where} param {i} state {name}"
            err = rel_error(sa[name], value)
            assert err <= STATE_TOLERANCE[b.dtype], f"{where} param {i} state {name}: {err}"
            sa[name].copy_(value)
        with torch.no_grad():
            a.copy_(b)


@pytest.mark.parametrize("record, config", CASES)
def test_multi_tensor_launches_match_per_tensor_reference(record, config):
    """Params and every state after every step, against the reference backend; then a param group
    added mid-run (its tensors one step count behind, so they launch apart) for two more steps."""
    ref_params = _params(SHAPES)
    tri_params = _clone(ref_params)
    ref = record.generated(ref_params, backend="torch", **config)
    tri = record.generated(tri_params, backend="triton", **config)
    for step in range(1, STEPS + 1):
        _step_both(record, ref, tri, ref_params, tri_params, step)
        _compare_and_resync(ref, tri, ref_params, tri_params, f"step {step}")
    new_ref = _params([((48,), torch.float32), ((3, 16), torch.float32)], seed=1)
    new_tri = _clone(new_ref)
    ref.add_param_group({"params": new_ref})
    tri.add_param_group({"params": new_tri})
    ref_params, tri_params = ref_params + new_ref, tri_params + new_tri
    for step in range(STEPS + 1, STEPS + 3):
        _step_both(record, ref, tri, ref_params, tri_params, step)
        _compare_and_resync(ref, tri, ref_params, tri_params, f"step {step}")


def _count(spec, groups, steps=2, **config):
    """Kernel launches of the last of `steps` steps, by kernel name."""
    record = next(r for r in ALL_RECORDS if r.spec == spec)
    params = [p for g in groups for p in g["params"]]
    opt = record.generated(groups, backend="triton", **config)
    kwargs = {"loss": torch.tensor(2.0)} if record.loss_fn is not None else {}
    for step in range(1, steps + 1):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g
        if step < steps:
            opt.step(**kwargs)
    with count_launches(_module(spec), opt) as (kernels, ops):
        opt.step(**kwargs)
    return kernels, ops, opt


def _aligned(count, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(16 * (n + 1), generator=gen).requires_grad_() for n in range(count)]


@pytest.mark.parametrize("spec", ["adamw_clip_global", "sps_momentum"])
def test_launches_per_bucket_not_per_tensor(spec):
    kernels, ops, _ = _count(spec, [{"params": _aligned(40)}])
    assert sorted(kernels.values()) == [1, 1], dict(kernels)
    assert sum("_contributions_kernel" in name for name in kernels) == 1, dict(kernels)
    assert sum("_multi_kernel" in name for name in kernels) == 1, dict(kernels)
    few_kernels, few_ops, _ = _count(spec, [{"params": _aligned(3)}])
    assert few_kernels == kernels and few_ops == ops, "the launches do not grow with the tensor count"
    # A bfloat16 tensor and one whose size is no multiple of 16 (no vector loads) are buckets of
    # their own, for the contributions and the update; a second group with another lr updates in
    # a launch of its own (other scalars) but contributes with the first group's fp32 tensors.
    mixed = _aligned(4) + [torch.randn(16, dtype=torch.bfloat16, requires_grad=True), torch.randn(7, requires_grad=True)]
    kernels, _, _ = _count(spec, [{"params": mixed}, {"params": _aligned(2, seed=1), "lr": 0.5}])
    contribution_launches = sum(n for name, n in kernels.items() if "contributions" in name)
    update_launches = sum(n for name, n in kernels.items() if "contributions" not in name)
    assert (contribution_launches, update_launches) == (3, 4), dict(kernels)


def test_lamb_launches_per_pass_not_per_tensor():
    """LAMB's per-tensor norms: one reduce launch and one update launch for 40 small tensors and
    one of three programs, and the same fixed number of torch ops for 4 tensors or 41."""
    params = _aligned(40) + [torch.randn(3 * 1024, requires_grad=True)]
    kernels, ops, _ = _count("lamb", [{"params": params}])
    assert sorted(kernels.values()) == [1, 1], dict(kernels)
    assert sum("_multi_reduce1_kernel" in name for name in kernels) == 1, dict(kernels)
    _, few_ops, _ = _count("lamb", [{"params": _aligned(4)}])
    assert ops == few_ops and sum(ops.values()) <= 15, (dict(ops), dict(few_ops))


def test_gc_adam_launches_its_1d_tensors_together():
    """GC-Adam centralizes only tensors with ndim > 1: the 1-D ones (biases, norms) take one
    multi-tensor launch, each 2-D one its reduce kernel (per-row means) and its update."""
    params = _aligned(6) + [torch.randn(4, 8, requires_grad=True), torch.randn(3, 16, requires_grad=True)]
    kernels, _, _ = _count("gc_adam", [{"params": params}])
    multi = sum(n for name, n in kernels.items() if "_multi_kernel" in name)
    assert multi == 1 and sum(kernels.values()) == 1 + 2 * 2, dict(kernels)


def test_tables_are_cached_and_rebuilt_when_storage_changes():
    record = next(r for r in ALL_RECORDS if r.spec == "adamw_clip_global")
    ref_params = _aligned(4)
    tri_params = _clone(ref_params)
    ref = record.generated(ref_params, backend="torch")
    tri = record.generated(tri_params, backend="triton")

    def step(n, keep_grad_storage=False):
        grads = make_grads(ref_params, n)
        for p, q, g in zip(ref_params, tri_params, grads):
            p.grad = g.clone()
            if keep_grad_storage and q.grad is not None:
                q.grad.copy_(g)
            else:
                q.grad = g.clone()
        ref.step()
        tri.step()
        _compare_and_resync(ref, tri, ref_params, tri_params, f"step {n}")

    step(1)
    step(2, keep_grad_storage=True)
    first = dict(tri._tables)
    assert len(first) == 2, "one table pair for the contributions, one for the update"
    step(3, keep_grad_storage=True)
    assert all(tri._tables[key][3] is first[key][3] for key in first), "same storage: nothing rebuilt"
    # New gradient storage every step (zero_grad(set_to_none=True)): new tensor tables, kept chunk tables.
    step(4)
    assert set(tri._tables) == set(first)
    assert all(tri._tables[key][3] is not first[key][3] for key in first)
    assert all(tri._tables[key][2] is first[key][2] for key in first), "same sizes: the chunk table is kept"
    # `.data` replaced (what `module.to()` does): rebuilt, same results (compared in step()).
    for p in tri_params:
        p.data = p.data.clone()
    for name in ("exp_avg", "exp_avg_sq"):
        tri.state[tri_params[0]][name] = tri.state[tri_params[0]][name].clone()
    step(5)
    # A frozen tensor (no grad) leaves the launch; tables of launches a step no longer makes go.
    tri_params[1].grad = ref_params[1].grad = None
    tri.step()
    ref.step()
    assert len(tri._tables) == 2
    assert all(len(entry[0]) == 3 for entry in tri._tables.values())


COMPILE_CHECK = textwrap.dedent('''
    import re, sys, warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, sys.argv[1])
    import importlib
    import torch
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    failures, compiled = [], 0
    for spec in sys.argv[2:]:
        module = importlib.import_module("generated." + spec)
        cls = next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
                   and v.__module__ == module.__name__)
        # flags reach the kernels as Python bools
        flags = {name for name, value in module._hyperparameters(cls([torch.zeros(1)]).defaults).items()
                 if isinstance(value, bool)}
        kernels = [k for k in vars(module).values() if isinstance(k, triton.runtime.JITFunction)
                   and k.arg_names[:2] == ["tensors_ptr", "chunks_ptr"]]
        for kernel in sorted(kernels, key=lambda k: k.__name__):
            for dtypes, aligned in [((tl.float32,) * 8, True), ((tl.bfloat16,) + (tl.float32,) * 7, False)]:
                constexprs = {"DTYPES": dtypes, "ALIGNED": aligned, "BLOCK_SIZE": module.BLOCK_SIZE}
                signature = {name: "constexpr" if name in constexprs else
                             "*i64" if name in ("tensors_ptr", "chunks_ptr") else
                             "*fp32" if name.endswith("_ptr") else
                             "i1" if name in flags or name.startswith("fresh_") else "fp32" for name in kernel.arg_names}
                source = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
                ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
                compiled += 1
                vector = bool(re.search(r"(ld|st)\\.global(\\.\\w+)*\\.v[24]", ptx))
                if vector != aligned:
                    failures.append((spec, kernel.__name__, aligned))
    print("COMPILED", compiled, "FAILURES", failures)
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
    specs = sorted({r.spec for r in MULTI_RECORDS})
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK, str(ROOT), *specs], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    compiled = int(result.stdout.split("COMPILED")[1].split()[0])
    assert compiled >= 2 * len(specs), result.stdout[-3000:]
    assert "FAILURES []" in result.stdout, result.stdout[-3000:]
