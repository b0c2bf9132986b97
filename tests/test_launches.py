"""What one step launches, per spec: Triton kernels and device torch ops (tests/launches.py).

* An elementwise rule: one kernel for all the tensors of a param group with the same dtypes (the
  multi-tensor engine), and one op that counts their steps.
* A rule with per-tensor reductions (LAMB, per-tensor clipping, AGR) or host scalar states
  (NAdam): one multi-tensor launch per reduction level plus one for the update, for all the
  tensors of a bucket, and a fixed number of torch ops that finish the per-tensor values of all
  of them.
* A rule with per-row or per-column reductions: a reduce kernel and the update for the tensors
  that reduce that way (torch finishes the rows), one fused kernel for the others.
* A rule with global reductions: one multi-tensor kernel computes every tensor's contribution,
  a fixed number of torch ops combine them, and one multi-tensor kernel updates every tensor,
  however many tensors there are.
"""

import importlib

import pytest
import torch

from harness import make_grads, make_params
from launches import count_launches
from optdsl.compiler import compile_file
from records import ALL_RECORDS

from conftest import ROOT

SMALL = ((7, 13), (129,), ())


def _gradients(record, params, step) -> dict:
    """Set step `step`'s gradients; return the step() arguments (the loss, for rules that read it)."""
    if record.loss_fn is not None:
        for p in params:
            p.grad = None
        with torch.enable_grad():
            loss = record.loss_fn(params, step, 0)
            loss.backward()
        return {"loss": loss.detach()}
    for p, g in zip(params, make_grads(params, step)):
        if p.grad is None:
            p.grad = g
        else:
            p.grad.copy_(g)  # gradients keep their storage, as under zero_grad(set_to_none=False)
    return {}


def _step_counts(record, shapes):
    module = importlib.import_module(f"generated.{record.spec}")
    params = make_params(shapes, torch.float32)
    opt = record.generated(params, backend="triton", **record.configs[-1])
    for step in (1, 2, 3):  # count the third: state exists and no state is new, as in training
        kwargs = _gradients(record, params, step)
        if step < 3:
            opt.step(**kwargs)
    with count_launches(module, opt) as (kernels, ops):
        opt.step(**kwargs)
    return sum(kernels.values()), sum(ops.values()), module.BLOCK_SIZE, kernels


def _reductions(record):
    plan = compile_file(ROOT / "specs" / f"{record.spec}.opt").plan
    return [step for staged in plan.staged for step in staged.reductions] + list(plan.global_reductions), plan


@pytest.mark.parametrize("record", [pytest.param(r, id=r.spec) for r in ALL_RECORDS])
def test_launches_per_step(record):
    reductions, plan = _reductions(record)
    kernels, ops, block, names = _step_counts(record, SMALL)
    assert all(torch.Size(s).numel() <= block for s in SMALL)
    if any(r.over in ("row", "col") for r in reductions):
        # Per-row/column values go through torch: the tensors that reduce per row (2-D, by the
        # specs' `if ndim > 1`) take a reduce kernel and the update, the others one fused kernel.
        levels = max(s.level for staged in plan.staged for s in staged.reductions)
        per_tensor = [_step_counts(record, (shape,))[0] for shape in SMALL]
        assert all(1 <= k <= levels + 1 for k in per_tensor) and max(per_tensor) > 1, per_tensor
        return
    if plan.global_reductions:
        more_kernels, more_ops, _, _ = _step_counts(record, SMALL * 4)
        assert (kernels, more_kernels) == (2, 2), f"{record.spec}: {kernels}, {more_kernels} kernels"
        assert ops == more_ops <= 8, f"{record.spec}: {ops}, {more_ops} torch ops"
        return
    if not plan.lowered.staged:
        # The multi-tensor engine: one launch for the three float32 tensors; the launch tables are
        # cached (no storage changed). The one foreach op that counts their steps runs on the
        # CPU step counters here (on a GPU, one device op), so it is not counted.
        assert (kernels, ops) == (1, 0), f"{record.spec}: {kernels} kernels, {ops} torch ops"
        return
    # Per-tensor reductions (or none, with host scalar states): the tensors of a bucket (here all
    # three: float32, the same step, no 16-byte vector loads) take one launch per pass together,
    # and torch finishes their per-tensor values together: the counts do not grow with the tensors.
    levels = max((s.level for staged in plan.staged for s in staged.reductions), default=0)
    kernels, ops, _, names = _step_counts(record, SMALL * 2)  # (a bucket of one tensor may save a copy)
    more_kernels, more_ops, _, more_names = _step_counts(record, SMALL * 4)
    assert (more_kernels, more_ops) == (kernels, ops), f"{record.spec}: {dict(names)} vs {dict(more_names)}"
    assert all("_multi_" in name for name in names), f"{record.spec}: {dict(names)}"
    variants = {name.split("_kernel")[-1] for name in names}
    assert kernels <= (levels + 1) * len(variants), f"{record.spec}: {dict(names)}"
    assert ops <= 20, f"{record.spec}: {ops} torch ops"
    if reductions:
        kernels, _, _, _ = _step_counts(record, ((block // 16 + 1, 16),))  # 2-D: rules reduce when ndim > 1
        assert kernels == levels + 1, f"{record.spec}: {kernels} kernels for one tensor over BLOCK_SIZE"


def test_radam_decides_rho_t_in_the_kernel():
    """RAdam's `if rho_t > 5` reads the step, which the kernels decide per program: one launch
    for the float32 tensors at every step, before rho_t passes 5 (step 6 with the default betas)
    and after, and the same kernel throughout."""
    record = next(r for r in ALL_RECORDS if r.spec == "radam")
    module = importlib.import_module("generated.radam")
    params = make_params(SMALL, torch.float32)
    opt = record.generated(params, backend="triton")
    hyperparameters = module._hyperparameters(opt.param_groups[0])
    switched, launched = [], []
    for step in range(1, 9):
        _gradients(record, params, step)
        with count_launches(module, opt) as (kernels, ops):
            opt.step()
        assert sum(kernels.values()) == 1, f"step {step}: {dict(kernels)}"
        if step > 1:  # the first step creates the states and the launch tables
            assert sum(ops.values()) == 0, f"step {step}: {dict(ops)}"
        switched.append(module._variant(dict(hyperparameters, step=float(step)))[1])
        launched += list(kernels)
    assert switched == [False] * 5 + [True] * 3
    assert len(set(launched)) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the host-sync check runs on a GPU")
def test_staged_steps_never_sync_with_the_host_on_cuda():
    """Reduced values, the loss and global totals stay on the device: for every spec with
    reductions, a step (after the one that creates the state) runs under
    torch.cuda.set_sync_debug_mode("error") without raising."""
    staged = [r for r in ALL_RECORDS if _reductions(r)[1].lowered.staged]
    assert len(staged) >= 16
    for record in staged:
        params = make_params(SMALL + ((70, 40),), torch.float32, device="cuda")
        opt = record.generated(params, **record.configs[-1])
        for step in (1, 2, 3):
            kwargs = _gradients(record, params, step)
            torch.cuda.synchronize()
            if step == 1:
                opt.step(**kwargs)
                continue
            torch.cuda.set_sync_debug_mode("error")
            try:
                opt.step(**kwargs)
            except RuntimeError as exc:
                raise AssertionError(f"{record.spec}: {exc}") from exc
            finally:
                torch.cuda.set_sync_debug_mode("default")
