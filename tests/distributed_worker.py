"""Processes for tests/test_distributed.py: generated optimizers under FSDP2 (`fully_shard`), on
DTensor parameters of a 2-D device mesh, under DDP, and through torch.distributed.checkpoint.

`spawn(scenario, world, out)` starts `world` processes (gloo on CPU by default); each runs the
scenario's checks in the same order and writes {check: {"ok", "error", measurements}} to
out/<scenario>.rank<r>.json. A check compares the distributed run with the same optimizer on plain
tensors in one process (same global batch or gradients): parameters and every state after every
step. After each check the ranks agree on whether all passed, and stop at the first failure (a
rank that failed mid-check would leave the others' collectives unmatched).

By hand, e.g. on two GPUs with NCCL (not yet run: no GPU was available when this was written):
    python tests/distributed_worker.py world2 2 /tmp/out --device cuda
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import socket
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parent.parent
STEPS = 4

# generated module -> (class, hyperparameters moved off their defaults so every term acts)
CASES = {
    "adamw": ("AdamW", dict(lr=0.01, weight_decay=0.1)),
    "lion": ("Lion", dict(lr=0.01, weight_decay=0.1)),
    "adamw_clip_global": ("AdamWClipGlobal", dict(lr=0.01, max_norm=0.05)),  # clips every step
    "lamb": ("Lamb", dict(lr=0.01, weight_decay=0.1)),
    "sps": ("SPS", dict(lr=0.2)),
    "gc_adam": ("GCAdam", dict(lr=0.01)),  # per-row mean of the gradient
    "rowcol": ("RowCol", dict(lr=0.01)),  # ROWCOL_SPEC below
}
FSDP2_CASES = ["adamw", "lion", "adamw_clip_global", "lamb", "sps"]
MESH2D_CASES = ["adamw", "lion", "adamw_clip_global", "lamb", "sps", "gc_adam", "rowcol"]
TRITON_CASES = ["adamw", "lion", "adamw_clip_global", "lamb", "sps", "rowcol"]
DDP_CASES = ["adamw_clip_global", "lamb", "sps"]
CHECKPOINT_CASES = ["adamw", "lamb", "rowcol"]
TOLERANCE = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}

# Test-only rule with every kind of reduction that is not global: per-row and per-column
# reductions (in the kernel and of row/column states), their states, means, cosines, norm_inf.
ROWCOL_SPEC = '''optimizer RowCol """Test rule: per-row, per-column and per-tensor reductions and states."""

hyper lr = 0.01                    where lr >= 0

state row_var: row = 0
state col_var: col = 0
state scale: scalar = 1

update {
    row_var = 0.9 * row_var + 0.1 * row_mean(grad^2)
    col_var = 0.9 * col_var + 0.1 * col_max(abs(grad))
    v = row_var * col_var / max(mean(row_var), 1e-30) + max(col_var) * 1e-3
    scale = 0.5 * scale + 0.5 * (rms(param) + cosine(param, grad) + norm_inf(grad))
    param = param - lr * scale * grad / sqrt(v + 1e-8) - lr * 1e-2 * row_norm(param) * col_sum(grad) + lr * 1e-3 * col_cosine(param, grad)
}
'''


def optimizer_class(name, out):
    """The generated optimizer class `name` (RowCol is compiled by the test into `out`)."""
    cls_name, _ = CASES[name]
    path = Path(out) / "rowcol.py" if name == "rowcol" else ROOT / "generated" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_dist_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, cls_name), module


def compile_rowcol(out):
    sys.path.insert(0, str(ROOT))
    from optdsl.compiler import compile_file

    spec = Path(out) / "rowcol.opt"
    spec.write_text(ROWCOL_SPEC)
    (Path(out) / "rowcol.py").write_text(compile_file(spec).source)


class CountAllReduces:
    """Counts the all-reduces (and their bytes) the generated code issues inside the block."""

    def __enter__(self):
        self.calls = self.bytes = 0
        self.original = dist.all_reduce

        def counted(tensor, *args, **kwargs):
            self.calls += 1
            self.bytes += tensor.numel() * tensor.element_size()
            return self.original(tensor, *args, **kwargs)

        dist.all_reduce = counted
        return self

    def __exit__(self, *exc):
        dist.all_reduce = self.original


def _model(dtype, device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(device, dtype)


def _batch(step, dtype, device):
    generator = torch.Generator().manual_seed(100 + step)
    x = torch.randn(8, 6, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    return x.to(device, dtype), y.to(device, dtype)


def _step(opt, name, loss):
    if name in ("sps",):
        opt.step(loss=loss)  # the loss of the global batch: the same on every rank
    else:
        opt.step()


def _expected_placements(kind, param):
    """docs/distributed.md: states per element are sharded as the parameter; per row / column,
    sharded where the parameter's rows / columns are; per tensor, replicated."""
    from torch.distributed.tensor import Replicate

    keep = {"element": lambda d: True, "row": lambda d: d == 0, "col": lambda d: d > 0}.get(kind, lambda d: False)
    ndim = max(param.dim(), 1)
    return tuple(p if p.is_shard() and keep(p.dim % ndim) else Replicate() for p in param.placements)


class Compare:
    """Max absolute difference seen, and an assert with the dtype's tolerance."""

    def __init__(self, dtype):
        self.dtype, self.worst = dtype, 0.0

    def __call__(self, got, expected, what):
        got = got.full_tensor() if hasattr(got, "full_tensor") else got
        if got.numel():
            self.worst = max(self.worst, float((got.detach().double() - expected.detach().double()).abs().max()))
        torch.testing.assert_close(got, expected, **TOLERANCE[self.dtype], msg=lambda m: f"{what}: {m}")


def _compare_all(compare, module, pairs, opt_plain, opt, step, sharded=True):
    """Parameters and every state, the distributed ones gathered (all-gather) where sharded."""
    kinds = getattr(module, "_STATE_KINDS", {})
    for index, (p, q) in enumerate(pairs):
        compare(q, p, f"step {step} param {index}")
        assert set(opt.state[q]) == set(opt_plain.state[p]), (set(opt.state[q]), set(opt_plain.state[p]))
        for key, expected in opt_plain.state[p].items():
            got = opt.state[q][key]
            kind = "host" if key == "step" else kinds.get(key, "element")
            if sharded and kind != "host":
                from torch.distributed.tensor import DTensor

                assert isinstance(got, DTensor), f"state {key} is not a DTensor"
                assert tuple(got.placements) == _expected_placements(kind, q), (key, got.placements, q.placements)
            compare(got, expected, f"step {step} param {index} state {key}")


def _global_loss(loss, world):
    loss = loss.detach().clone()
    dist.all_reduce(loss)
    return loss / world


def check_fsdp2(name, dtype, backend, rank, world, mesh, device, out, save=False):
    """fully_shard(model) on `mesh` vs the plain model, the same global batch of 8 split over ranks."""
    from torch.distributed.fsdp import fully_shard

    cls, module = optimizer_class(name, out)
    kwargs = CASES[name][1]
    plain = _model(dtype, device)
    sharded = copy.deepcopy(plain)
    for layer in (sharded[0], sharded[2], sharded):
        fully_shard(layer, mesh=mesh)
    opt_plain = cls(plain.parameters(), backend=backend, **kwargs)
    opt = cls(sharded.parameters(), backend=backend, **kwargs)
    compare, comms = Compare(dtype), []
    for step in range(STEPS):
        x, y = _batch(step, dtype, device)
        loss = torch.nn.functional.mse_loss(plain(x), y)
        loss.backward()
        _step(opt_plain, name, loss.detach())
        opt_plain.zero_grad()
        local = torch.nn.functional.mse_loss(sharded(x.chunk(world)[rank]), y.chunk(world)[rank])
        local.backward()  # FSDP2 averages the gradients over the ranks: the global batch's gradient
        loss = _global_loss(local, world)
        with CountAllReduces() as count:
            _step(opt, name, loss)
        comms.append((count.calls, count.bytes))
        opt.zero_grad()
        _compare_all(compare, module, list(zip(plain.parameters(), sharded.parameters())), opt_plain, opt, step)
    if save:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        state = {"model": get_model_state_dict(sharded), "optim": get_optimizer_state_dict(sharded, opt)}
        dcp.save(state, checkpoint_id=str(Path(out) / f"checkpoint_{name}"))
    return dict(max_abs_error=compare.worst, all_reduces_per_step=comms)


# (global shape, placements on a 2 x 2 mesh): rows and columns split, split twice, replicated.
MESH2D_PARAMS = [
    ((6, 5), ("S0", "S1")),
    ((4, 6), ("R", "S1")),
    ((5, 3, 2), ("S1", "S0")),
    ((6,), ("S0", "R")),
    ((3, 4), ("R", "R")),
    ((2, 3), ("S1", "S1")),
]
# The first two are empty on different ranks (a size-1 dim split in two) and sharded over different
# mesh dims: on the Triton path, a rank mixes empty shards' neutral contributions with multi-tensor
# launches over the others, per process group.
EMPTY_SHARD_PARAMS = [((1, 4), ("S0", "R")), ((4, 1), ("R", "S1")), ((6, 5), ("S0", "S1"))]


def check_mesh2d(name, dtype, backend, rank, world, mesh, device, out, params=MESH2D_PARAMS):
    """DTensor parameters with the placements of `params` vs plain tensors, the same gradients."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    cls, module = optimizer_class(name, out)
    kwargs = CASES[name][1]
    generator = torch.Generator().manual_seed(1)
    plain = [torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype).requires_grad_()
             for shape, _ in params]
    placements = [[Replicate() if p == "R" else Shard(int(p[1])) for p in spec] for _, spec in params]
    # Every rank holds the same full values: each keeps its own shard, with no communication.
    sharded = [distribute_tensor(p.detach().clone(), mesh, pl, src_data_rank=None).requires_grad_()
               for p, pl in zip(plain, placements)]
    opt_plain = cls(plain, backend=backend, **kwargs)
    opt = cls(sharded, backend=backend, **kwargs)
    compare, comms = Compare(dtype), []
    for step in range(STEPS):
        for p, q, pl in zip(plain, sharded, placements):
            p.grad = torch.randn(p.shape, generator=generator, dtype=torch.float64).to(device, dtype)
            q.grad = distribute_tensor(p.grad.clone(), mesh, pl, src_data_rank=None)
        loss = torch.tensor(0.5 + 0.1 * step, dtype=dtype, device=device)
        _step(opt_plain, name, loss)
        with CountAllReduces() as count:
            _step(opt, name, loss)
        comms.append((count.calls, count.bytes))
        _compare_all(compare, module, list(zip(plain, sharded)), opt_plain, opt, step)
    return dict(max_abs_error=compare.worst, all_reduces_per_step=comms)


def check_ddp(name, rank, world, device, out):
    """DistributedDataParallel(model) vs the plain model on the same global batch."""
    from torch.nn.parallel import DistributedDataParallel

    cls, module = optimizer_class(name, out)
    kwargs = CASES[name][1]
    dtype = torch.float64
    plain = _model(dtype, device)
    ddp = DistributedDataParallel(copy.deepcopy(plain))
    opt_plain = cls(plain.parameters(), **kwargs)
    opt = cls(ddp.parameters(), **kwargs)
    compare = Compare(dtype)
    for step in range(STEPS):
        x, y = _batch(step, dtype, device)
        loss = torch.nn.functional.mse_loss(plain(x), y)
        loss.backward()
        _step(opt_plain, name, loss.detach())
        opt_plain.zero_grad()
        local = torch.nn.functional.mse_loss(ddp(x.chunk(world)[rank]), y.chunk(world)[rank])
        local.backward()  # DDP all-reduces the gradients (their mean over ranks)
        loss = _global_loss(local, world)
        with CountAllReduces() as count:
            _step(opt, name, loss)
        assert count.calls == 0, "a generated optimizer communicates nothing for plain (replicated) parameters"
        opt.zero_grad()
        _compare_all(compare, module, list(zip(plain.parameters(), ddp.module.parameters())), opt_plain, opt, step,
                     sharded=False)
    return dict(max_abs_error=compare.worst)


def load_at_world_size_1(name, out, extra_steps=3):
    """In one process with no process group: load the checkpoint saved by check_fsdp2 (world size
    2) into a plain model and optimizer; it must equal the plain run after STEPS steps, and stay
    equal for `extra_steps` more."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    cls, module = optimizer_class(name, out)
    kwargs = CASES[name][1]
    dtype, device = torch.float64, "cpu"
    expected = _model(dtype, device)
    opt_expected = cls(expected.parameters(), **kwargs)
    loaded = _model(dtype, device)
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    opt_loaded = cls(loaded.parameters(), **kwargs)
    # The template DCP loads into (get_optimizer_state_dict creates the state with a zero-lr step).
    state = {"model": get_model_state_dict(loaded), "optim": get_optimizer_state_dict(loaded, opt_loaded)}
    dcp.load(state, checkpoint_id=str(Path(out) / f"checkpoint_{name}"))
    set_model_state_dict(loaded, state["model"])
    set_optimizer_state_dict(loaded, opt_loaded, state["optim"])
    compare = Compare(dtype)
    for step in range(STEPS + extra_steps):
        x, y = _batch(step, dtype, device)
        if step >= STEPS:
            for model, opt in ((expected, opt_expected), (loaded, opt_loaded)):
                loss = torch.nn.functional.mse_loss(model(x), y)
                loss.backward()
                _step(opt, name, loss.detach())
                opt.zero_grad()
        else:
            loss = torch.nn.functional.mse_loss(expected(x), y)
            loss.backward()
            _step(opt_expected, name, loss.detach())
            opt_expected.zero_grad()
        if step >= STEPS - 1:
            pairs = list(zip(expected.parameters(), loaded.parameters()))
            _compare_all(compare, module, pairs, opt_expected, opt_loaded, step, sharded=False)
    return dict(max_abs_error=compare.worst)


def _checks(scenario, rank, world, device, out):
    """(name, thunk) in the order every rank runs them."""
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(device.split(":")[0], (world,))
    checks = []
    for name in FSDP2_CASES:
        checks.append((f"fsdp2/{name}/float64", lambda n=name: check_fsdp2(
            n, torch.float64, "torch", rank, world, mesh, device, out, save=scenario == "world2" and n in CHECKPOINT_CASES)))
    if scenario == "world2":
        checks.append(("fsdp2/rowcol/float64", lambda: check_fsdp2(
            "rowcol", torch.float64, "torch", rank, world, mesh, device, out, save=True)))
        for name in TRITON_CASES:
            checks.append((f"fsdp2/{name}/float32-triton", lambda n=name: check_fsdp2(
                n, torch.float32, "triton", rank, world, mesh, device, out)))
        for name in DDP_CASES:
            checks.append((f"ddp/{name}", lambda n=name: check_ddp(n, rank, world, device, out)))
    if scenario == "world4":
        mesh2d = init_device_mesh(device.split(":")[0], (2, 2))
        for name in MESH2D_CASES:
            checks.append((f"mesh2d/{name}/float64", lambda n=name: check_mesh2d(
                n, torch.float64, "torch", rank, world, mesh2d, device, out)))
        for name in ("lamb", "rowcol", "adamw_clip_global"):
            checks.append((f"mesh2d/{name}/float32-triton", lambda n=name: check_mesh2d(
                n, torch.float32, "triton", rank, world, mesh2d, device, out)))
        for name in ("adamw_clip_global", "sps"):
            checks.append((f"mesh2d-empty-shards/{name}/float32-triton", lambda n=name: check_mesh2d(
                n, torch.float32, "triton", rank, world, mesh2d, device, out, params=EMPTY_SHARD_PARAMS)))
    return checks


def _entry(rank, world, port, out, scenario, device="cpu"):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
        device = f"cuda:{rank}"
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    results = {}
    try:
        for name, check in _checks(scenario, rank, world, device, out):
            start = time.perf_counter()
            try:
                results[name] = dict(ok=True, **check())
            except Exception:
                results[name] = dict(ok=False, error=traceback.format_exc())
            results[name]["seconds"] = round(time.perf_counter() - start, 3)
            passed = torch.tensor([1.0 if results[name]["ok"] else 0.0], device=device)
            dist.all_reduce(passed, op=dist.ReduceOp.MIN)
            if passed.item() == 0:
                results.setdefault("stopped_after", name)
                break
    finally:
        Path(out, f"{scenario}.rank{rank}.json").write_text(json.dumps(results, indent=1))
        dist.destroy_process_group()
    # The results are written: leave without the interpreter's teardown, where a gloo thread still
    # joinable at static destruction aborts the process now and then ("terminate called without
    # an active exception", SIGABRT), which would fail a run whose checks all passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(scenario, world, out, timeout=240, device="cpu"):
    """Run `scenario` in `world` processes; the ranks' results, or an error after `timeout` s.
    A group whose processes die before any rank wrote a result (the rendezvous port taken between
    free_port() and the bind, on a busy machine) is started once more on a new port."""
    import torch.multiprocessing as mp

    try:
        return _spawn_once(scenario, world, out, timeout, device)
    except mp.ProcessExitedException:
        if any(Path(out, f"{scenario}.rank{r}.json").exists() for r in range(world)):
            raise  # a rank got past setup: a real failure
        return _spawn_once(scenario, world, out, timeout, device)


def _spawn_once(scenario, world, out, timeout, device):
    import torch.multiprocessing as mp

    context = mp.start_processes(_entry, args=(world, free_port(), str(out), scenario, device), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scenario}: {world} processes still running after {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    return [json.loads(Path(out, f"{scenario}.rank{r}.json").read_text()) for r in range(world)]


if __name__ == "__main__":
    scenario, world, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
    out.mkdir(parents=True, exist_ok=True)
    compile_rowcol(out)
    device = "cuda" if "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1] == "cuda" else "cpu"
    if device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # the float32 checks run the Triton kernels
    start = time.perf_counter()
    results = spawn(scenario, world, out, device=device)
    for name, result in results[0].items():
        print(name, json.dumps(result) if isinstance(result, str) else {k: v for k, v in result.items() if k != "error"})
    failed = [(r, n) for r, ranks in enumerate(results) for n, v in ranks.items() if isinstance(v, dict) and not v["ok"]]
    for r, n in failed:
        print(f"rank {r} {n}:\n{results[r][n]['error']}")
    print(f"{len(failed)} failed, {time.perf_counter() - start:.1f} s")
    sys.exit(1 if failed else 0)
