"""Optimizer step-time benchmark: a generated optimizer against torch.optim in the same run.

    PYTHONPATH=. python bench/suite.py adamw [adam sgd:momentum=0.9 ...] [--sizes 1M 10M 100M 1B]
        [--shapes one gpt2 1000x64k] [--dtypes fp32 bf16] [--repeats 20] [--out bench/results]
    optdsl bench adamw ...          # the same, from the CLI

For each optimizer, size, shape and dtype it times `step()` of

* `optdsl`: the generated class (`generated/<spec>.py`; backend "auto": the Triton kernels on
  CUDA, the PyTorch reference on CPU),
* the torch.optim class the spec mirrors, where one exists (`TORCH_BASELINES`): `foreach=False`
  (the for-loop), `foreach=True`, `fused=True` (when torch has it for the device and dtype), and
  `torch.compile(opt.step)` with a tensor lr (on CUDA by default; on CPU only with `--compile`),

all in one process, interleaved round by round (every candidate steps once per round, so a noisy
machine slows all of them alike) when memory allows, else one after the other. Gradients are set
once, untimed; `--warmup` untimed steps come first (the first creates the state). CUDA steps are
timed with CUDA events after a synchronize, CPU steps with `time.perf_counter`.

Reported per candidate: median and min step time over `--repeats` steps (on CPU also the process
CPU time per step, which a machine shared with other jobs inflates less); the minimum bytes one step
must move, from the candidate's own state after warmup (param read + written, grad read, every
state tensor shaped like its param read + written, each at its dtype); effective bandwidth = those
bytes / median time; and its percentage of the copy bandwidth measured in the same run
(`dst.copy_(src)`, 2 x bytes / median time).

Shapes (`SHAPES`):
* `one`: one tensor of N elements;
* `gpt2`: the 148 parameter tensors of GPT-2 small (124,439,808 elements, lm_head tied to wte),
  every tensor scaled by N / 124,439,808 (rounded, at least 1 element, the rounding remainder
  added to `wte`) and flattened to 1-D: elementwise rules see only sizes and contiguity;
* `1000x64k`: tensors of 65,536 elements, N // 65,536 of them plus one holding the remainder
  (exactly 1 000 x 64 K at N = 65,536,000).

dtypes: `fp32` (params, grads, state in float32) and `bf16` (bfloat16 params and grads, state
converted to float32 after the first step; a candidate that cannot step with float32 state keeps
the state it made, and the JSON says which dtype it used).

Sizes whose tensors would not fit (estimated from each candidate's state on a small probe, plus
temporaries, against available host or GPU memory) are skipped and listed as skipped in the JSON.
Writes `<out>/<name>.json`, `<name>.md` and, when matplotlib is installed, `<name>.png`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import math
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEMA = "optdsl-bench/1"

# spec stem -> (torch.optim class name, hyperparameters the torch class does not take and how the
# baseline applies them). `clip`: the baseline calls clip_grad_norm_(params, max_norm) first.
TORCH_BASELINES = {
    "adam": ("Adam", None),
    "adamw": ("AdamW", None),
    "sgd": ("SGD", None),
    "adagrad": ("Adagrad", None),
    "rmsprop": ("RMSprop", None),
    "adamax": ("Adamax", None),
    "adadelta": ("Adadelta", None),
    "radam": ("RAdam", None),
    "adamw_clip_global": ("AdamW", "clip"),
}

GPT2_SMALL_NUMEL = 124_439_808


def gpt2_small_shapes():
    """The parameter shapes of GPT-2 small (HF `GPT2LMHeadModel`, lm_head tied to wte): 148 tensors."""
    d, ff, vocab, ctx, layers = 768, 3072, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def shape_numels(shape, numel):
    """Element counts of the tensors of `shape` ("one", "gpt2", "1000x64k") holding `numel` in all."""
    if shape == "one":
        return [numel]
    if shape == "gpt2":
        full = [math.prod(s) for s in gpt2_small_shapes()]
        assert sum(full) == GPT2_SMALL_NUMEL
        scale = numel / GPT2_SMALL_NUMEL
        sizes = [max(1, round(n * scale)) for n in full]
        sizes[0] += numel - sum(sizes)
        if sizes[0] < 1:
            raise ValueError(f"gpt2 needs at least {len(full)} elements, got {numel}")
        return sizes
    if shape == "1000x64k":
        count, rest = divmod(numel, 65536)
        return [65536] * count + ([rest] if rest else [])
    raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")


SHAPES = {
    "one": "one tensor",
    "gpt2": "GPT-2-small-like list (148 tensors, scaled)",
    "1000x64k": "tensors of 64 K elements (1 000 x 64 K at 65.5 M)",
}
DTYPES = {"fp32": (torch.float32, torch.float32), "bf16": (torch.bfloat16, torch.float32)}


def parse_size(text):
    """'1M' -> 1_000_000; also K (1e3), B or G (1e9), '1e4' and plain integers."""
    text = str(text).strip()
    match = re.fullmatch(r"([0-9.eE+]+)\s*([kKmMbBgG]?)", text)
    if not match:
        raise ValueError(f"bad size {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9}[match.group(2).lower()]
    return int(round(value))


def parse_spec(text):
    """'sgd:momentum=0.9,nesterov=true' -> ('sgd', {'momentum': 0.9, 'nesterov': True})."""
    stem, _, rest = text.partition(":")
    stem = Path(stem).stem if stem.endswith(".opt") else stem
    config = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        low = value.strip().lower()
        if low in ("true", "false"):
            config[key.strip()] = low == "true"
        else:
            try:
                config[key.strip()] = int(value) if re.fullmatch(r"-?\d+", value.strip()) else float(value)
            except ValueError:
                config[key.strip()] = value.strip()
    return stem, config


def load_generated(stem):
    """The optimizer class of `generated/<stem>.py` (compiled in memory from specs/<stem>.opt if absent)."""
    try:
        module = importlib.import_module(f"generated.{stem}")
    except ModuleNotFoundError:
        spec = ROOT / "specs" / f"{stem}.opt"
        if not spec.exists():
            raise SystemExit(f"error: no generated/{stem}.py and no specs/{stem}.opt")
        import optdsl

        return optdsl.load(spec)
    classes = [v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
               and v.__module__ == module.__name__]
    if len(classes) != 1:
        raise SystemExit(f"error: generated/{stem}.py defines {len(classes)} optimizer classes, expected one")
    return classes[0]


# ---------------------------------------------------------------------------------------------
# Candidates


@dataclass
class Candidate:
    name: str
    kind: str  # optdsl | for-loop | foreach | fused | compile
    build: Callable  # params -> (optimizer, step callable)
    warmup_extra: int = 0
    note: str = ""


def candidates_for(stem, config, device, with_compile, lr, compile_max_tensors=2000):
    cls = load_generated(stem)
    backend = "auto" if device.type == "cuda" else "torch"
    ours_name = "optdsl (Triton)" if device.type == "cuda" else "optdsl (reference)"
    gen_config = dict(config, lr=lr)

    def build_ours(params):
        opt = cls(params, backend=backend, **gen_config)
        return opt, opt.step

    result = [Candidate(ours_name, "optdsl", build_ours)]
    if stem not in TORCH_BASELINES:
        return cls, result
    torch_name, extra = TORCH_BASELINES[stem]
    torch_cls = getattr(torch.optim, torch_name)
    torch_config = dict(config, lr=lr)
    max_norm = None
    if extra == "clip":
        max_norm = float(torch_config.pop("max_norm", 1.0))

    def make(flags, compiled=False):
        def build(params):
            opt = torch_cls(params, **torch_config, **flags)

            def step():
                if max_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_norm,
                                                   foreach=bool(flags.get("foreach") or flags.get("fused")))
                opt.step()

            return opt, (torch.compile(step) if compiled else step)
        return build

    label = f"torch.optim.{torch_name}" + (" + clip_grad_norm_" if max_norm is not None else "")
    result += [
        Candidate(f"{label} for-loop", "for-loop", make({"foreach": False})),
        Candidate(f"{label} foreach", "foreach", make({"foreach": True})),
        Candidate(f"{label} fused", "fused", make({"fused": True})),
    ]
    if with_compile:
        def build_compiled(params):
            # A tensor lr keeps a schedule from recompiling; foreach + tensor lr needs capturable
            # (CUDA). Fall back to what the device accepts.
            if len(params) > compile_max_tensors:
                raise RuntimeError(f"skipped: {len(params)} tensors > --compile-max-tensors {compile_max_tensors}")
            # Every case builds a new `step` with the same code object: without a reset, dynamo
            # would hit its recompile limit after a few cases and silently run them eagerly.
            torch._dynamo.reset()
            last = None
            options = ({"foreach": True}, {"foreach": False})
            if device.type == "cuda":
                options = ({"foreach": True, "capturable": True},) + options
            for flags in options:
                try:
                    lr_tensor = torch.tensor(lr, device=device if flags.get("capturable") else "cpu")
                    opt = torch_cls(params, **dict(torch_config, lr=lr_tensor), **flags)
                except (ValueError, RuntimeError, TypeError) as exc:  # e.g. SGD has no capturable
                    last = exc
                    continue

                def step(opt=opt):
                    if max_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=bool(flags.get("foreach")))
                    opt.step()

                opt._bench_flags = flags
                return opt, torch.compile(step)
            raise last

        result.append(Candidate(f"torch.compile({label}.step) tensor lr", "compile", build_compiled, warmup_extra=3))
    return cls, result


# ---------------------------------------------------------------------------------------------
# Measurement helpers


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device):
    """Seconds one call of `fn` takes (CUDA events around it on CUDA, perf_counter on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    cpu = time.process_time()
    fn()
    elapsed = time.perf_counter() - start
    _CPU_SECONDS[0] += time.process_time() - cpu
    return elapsed


# CPU seconds (all threads of this process) spent in timed calls since the last reset: unlike wall
# time it does not grow while the process waits for a core on a shared machine. The kernel
# charges it in scheduler ticks, so only sums over many calls mean anything.
_CPU_SECONDS = [0.0]


def timed_cpu(fn, device):
    """(wall seconds, process CPU seconds) of one call; CPU seconds are None on CUDA."""
    before = _CPU_SECONDS[0]
    wall = timed(fn, device)
    return wall, (None if device.type == "cuda" else _CPU_SECONDS[0] - before)


def available_bytes(device):
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 << 30


def copy_bandwidth(device, nbytes, repeats):
    """dst.copy_(src) of `nbytes`: median and min seconds, 2 x bytes / median."""
    n = nbytes // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    synchronize(device)
    times = [timed(lambda: dst.copy_(src), device) for _ in range(repeats)]
    del src, dst
    median = statistics.median(times)
    return {"bytes": n * 4, "repeats": repeats, "median_s": median, "min_s": min(times),
            "bandwidth_gbps": 2 * n * 4 / median / 1e9, "what": "dst.copy_(src), 2 x bytes / median time"}


def min_bytes(opt, params):
    """Minimum bytes one step moves: param r+w, grad r, each param-shaped state tensor r+w."""
    total = 0
    state_dtypes = set()
    for p in params:
        total += 2 * p.numel() * p.element_size() + p.grad.numel() * p.grad.element_size()
        for value in opt.state.get(p, {}).values():
            if isinstance(value, torch.Tensor) and value.shape == p.shape and value.dim() > 0:
                total += 2 * value.numel() * value.element_size()
                state_dtypes.add(str(value.dtype).replace("torch.", ""))
    return total, sorted(state_dtypes)


def widen_state(opt, params, dtype):
    """Convert every param-shaped floating state tensor to `dtype` (bf16 params, fp32 state)."""
    for p in params:
        state = opt.state.get(p, {})
        for key, value in list(state.items()):
            if (isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == p.shape
                    and value.dim() > 0 and value.dtype != dtype):
                state[key] = value.to(dtype)


def make_params(numels, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    params = []
    for n in numels:
        p = torch.nn.Parameter(torch.randn(n, generator=gen, device=device, dtype=torch.float32).to(dtype))
        grad = torch.randn(n, generator=gen, device=device, dtype=torch.float32).mul_(1e-2)
        p.grad = grad.to(dtype)
        params.append(p)
    return params


def prepare(candidate, params, state_dtype, warmup):
    """Build, step once, widen the state if asked, warm up. Returns (opt, step, state note)."""
    opt, step = candidate.build(params)
    step()
    note = ""
    if state_dtype is not None and any(p.dtype != state_dtype for p in params):
        snapshot = [p.detach().clone() for p in params]
        widen_state(opt, params, state_dtype)
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - dtype mismatch errors come as several types
            note = f"cannot step with {state_dtype} state ({str(exc).splitlines()[0][:120]}); kept its own"
            with torch.no_grad():
                for p, s in zip(params, snapshot):
                    p.copy_(s)
            del opt, step
            opt, step = candidate.build(params)
            step()
        del snapshot
    for _ in range(warmup + candidate.warmup_extra):
        step()
    return opt, step, note


# ---------------------------------------------------------------------------------------------
# The suite


def run_case(candidates, numels, dtype_name, device, repeats, warmup, probes, budget, copy_gbps):
    """Time every available candidate on one (size, shape, dtype). Returns the per-candidate rows."""
    param_dtype, state_dtype = DTYPES[dtype_name]
    numel = sum(numels)
    rows = {c.name: {"name": c.name, "kind": c.kind} for c in candidates}
    live = [c for c in candidates if probes[c.name].get("status") == "ok"]
    for c in candidates:
        if c not in live:
            rows[c.name].update(status=probes[c.name]["status"], reason=probes[c.name].get("reason", ""))
    el = torch.tensor([], dtype=param_dtype).element_size()
    base = numel * 2 * el
    temps = numel * 4 * 3  # for-loop/foreach/compile temporaries (denominators, grads in fp32)
    states = [probes[c.name]["state_bytes_per_param"] * numel for c in live]
    interleaved = base + sum(states) + temps
    sequential = base + max(states, default=0) + temps
    if sequential > budget:
        return None, {"schedule": "skipped", "needs_bytes": sequential, "available_bytes": budget}
    schedule = "interleaved" if interleaved <= budget else "sequential"

    params = make_params(numels, param_dtype, device)

    def start(c):
        try:
            opt, step, note = prepare(c, params, state_dtype, warmup)
        except Exception as exc:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
            rows[c.name].update(status="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            return None
        nbytes, state_dtypes = min_bytes(opt, params)
        rows[c.name].update(status="ok", min_bytes=nbytes, bytes_per_param=nbytes / numel, state_dtypes=state_dtypes)
        if note:
            rows[c.name]["note"] = note
        if getattr(opt, "_bench_flags", None) is not None:
            rows[c.name]["flags"] = {k: v for k, v in opt._bench_flags.items()}
        return opt, step

    def finish(c, measured):
        times = [wall for wall, _ in measured]
        median = statistics.median(times)
        row = rows[c.name]
        row.update(repeats=len(times), median_s=median, min_s=min(times), times_s=times,
                   bandwidth_gbps=row["min_bytes"] / median / 1e9)
        row["pct_copy_bandwidth"] = 100 * row["bandwidth_gbps"] / copy_gbps
        if device.type == "cpu":
            row["cpu_s_per_step"] = sum(cpu for _, cpu in measured) / len(measured)

    if schedule == "interleaved":
        running = {}
        for c in live:
            made = start(c)
            if made:
                running[c.name] = made
        synchronize(device)
        times = {name: [] for name in running}
        for _ in range(repeats):
            for c in live:
                if c.name in running:
                    times[c.name].append(timed_cpu(running[c.name][1], device))
        for c in live:
            if c.name in running:
                finish(c, times[c.name])
        del running
    else:
        for c in live:
            made = start(c)
            if made:
                synchronize(device)
                finish(c, [timed_cpu(made[1], device) for _ in range(repeats)])
            del made
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del params
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    ordered = [rows[c.name] for c in candidates]
    ours = next((r for r in ordered if r["kind"] == "optdsl" and r.get("status") == "ok"), None)
    for row in ordered:
        if ours is not None and row.get("status") == "ok":
            row["optdsl_time_ratio"] = ours["median_s"] / row["median_s"]  # < 1: optdsl faster
    return ordered, {"schedule": schedule}


def probe(candidates, dtype_name, device, warmup):
    """Run each candidate on a small tensor list: is it available, how many state bytes per param."""
    param_dtype, state_dtype = DTYPES[dtype_name]
    numels = [4096, 4096]
    out = {}
    for c in candidates:
        params = make_params(numels, param_dtype, device)
        try:
            opt, _step, _note = prepare(c, params, state_dtype, 0)
            nbytes, _ = min_bytes(opt, params)
            grads = sum(p.grad.numel() * p.grad.element_size() for p in params)
            pbytes = sum(p.numel() * p.element_size() for p in params)
            out[c.name] = {"status": "ok", "state_bytes_per_param": (nbytes - grads - 2 * pbytes) / 2 / sum(numels)}
        except Exception as exc:  # noqa: BLE001 - reported in the JSON
            out[c.name] = {"status": "unavailable", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        del params
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def device_info(device):
    info = {"type": device.type, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = cpu
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["host_memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["name"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    else:
        info["name"] = f"CPU: {cpu}"
    return info


def versions():
    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        import optdsl

        out["optdsl"] = optdsl.__version__
    except ImportError:
        pass
    return out


def run_suite(specs, sizes=("1M", "10M", "100M", "1B"), shapes=tuple(SHAPES), dtypes=tuple(DTYPES), repeats=20,
              warmup=3, compile=None, device=None, lr=1e-3, copy_mib=None, memory_fraction=0.6, threads=None,
              compile_max_tensors=2000, log=print, progress=None):
    """Run the benchmark; returns the result dict (see `write_outputs`). `specs`: 'adamw' or 'sgd:momentum=0.9'.

    `threads`: torch.set_num_threads for the run (CPU); None keeps torch's default. `progress`, when
    given, is called with the result so far (`"complete": false`) after every case, so a run cut
    short by a time limit still leaves what it measured.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    default_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run_suite(specs, sizes, shapes, dtypes, repeats, warmup, compile, device, lr, copy_mib,
                          memory_fraction, default_threads, compile_max_tensors, log, progress)
    finally:
        torch.set_num_threads(default_threads)


def _run_suite(specs, sizes, shapes, dtypes, repeats, warmup, compile, device, lr, copy_mib, memory_fraction,
               default_threads, compile_max_tensors, log, progress):
    load_start = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    if compile is None:
        compile = device.type == "cuda"
    sizes = [parse_size(s) for s in sizes]
    for shape in shapes:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r} (expected one of {', '.join(SHAPES)})")
    for dtype in dtypes:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r} (expected one of {', '.join(DTYPES)})")
    if copy_mib is None:
        copy_mib = 1024 if device.type == "cuda" else 256
    copy = copy_bandwidth(device, copy_mib << 20, max(repeats, 5))
    log(f"copy bandwidth ({copy_mib} MiB): {copy['bandwidth_gbps']:.1f} GB/s")
    results = []
    result = {
        "schema": SCHEMA,
        "complete": False,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": " ".join(sys.argv),
        "device": device_info(device),
        "versions": versions(),
        "settings": {"sizes": sizes, "shapes": {s: SHAPES[s] for s in shapes}, "dtypes": list(dtypes),
                     "repeats": repeats, "warmup": warmup, "compile": compile,
                     "compile_max_tensors": compile_max_tensors, "lr": lr, "statistic": "median",
                     "memory_fraction": memory_fraction, "torch_threads": torch.get_num_threads(),
                     "torch_default_threads": default_threads, "load_average_at_start": load_start,
                     "bytes": "param read+write, grad read, every param-shaped state tensor read+write, at their dtypes",
                     "bandwidth": "min bytes / median step time (GB/s = 1e9 B/s)"},
        "copy": copy,
        "results": results,
    }
    for text in specs:
        stem, config = parse_spec(text)
        cls, candidates = candidates_for(stem, config, device, compile, lr, compile_max_tensors)
        for dtype in dtypes:
            probes = probe(candidates, dtype, device, warmup)
            for shape in shapes:
                for numel in sizes:
                    numels = shape_numels(shape, numel)
                    budget = int(available_bytes(device) * memory_fraction)
                    entry = {"optimizer": stem, "class": cls.__name__, "config": dict(config, lr=lr), "spec": text,
                             "size": numel, "shape": shape, "tensors": len(numels), "dtype": dtype,
                             "param_dtype": str(DTYPES[dtype][0]).replace("torch.", ""),
                             "state_dtype_requested": str(DTYPES[dtype][1]).replace("torch.", "")}
                    rows, meta = run_case(candidates, numels, dtype, device, repeats, warmup, probes, budget,
                                          copy["bandwidth_gbps"])
                    entry.update(meta)
                    if rows is None:
                        entry["status"] = "skipped"
                        entry["reason"] = (f"needs ~{meta['needs_bytes'] / 2**30:.1f} GiB, "
                                           f"{meta['available_bytes'] / 2**30:.1f} GiB allowed "
                                           f"({memory_fraction:.0%} of available memory)")
                        log(f"{text:14s} {shape:9s} {dtype} {numel:>13,d}  skipped: {entry['reason']}")
                    else:
                        entry["status"] = "ok"
                        entry["candidates"] = rows
                        for row in rows:
                            if row.get("status") == "ok":
                                log(f"{text:14s} {shape:9s} {dtype} {numel:>13,d}  {row['name']:48s} "
                                    f"{row['median_s'] * 1e3:9.3f} ms  {row['bandwidth_gbps']:7.1f} GB/s "
                                    f"{row['pct_copy_bandwidth']:5.1f}%  optdsl/this {row['optdsl_time_ratio']:.2f}")
                            else:
                                log(f"{text:14s} {shape:9s} {dtype} {numel:>13,d}  {row['name']:48s} "
                                    f"{row.get('status')}: {row.get('reason', '')[:80]}")
                    results.append(entry)
                    if progress is not None:
                        progress(result)
    result["complete"] = True
    result["date_end"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    if hasattr(os, "getloadavg"):
        result["settings"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


# ---------------------------------------------------------------------------------------------
# Writers


def _fmt_size(n):
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g}{unit}"
    return str(n)


def markdown(result):
    dev = result["device"]
    v = result["versions"]
    s = result["settings"]
    lines = [
        f"# optdsl bench: {dev['name']}",
        "",
        *([] if result.get("complete", True) else ["**Incomplete: the run stopped before its last case.**", ""]),
        f"{result['date']}; torch {v['torch']}, triton {v.get('triton')}, python {v['python']}; "
        f"{dev['cpu_count']} CPUs, {dev['torch_threads']} torch threads.",
        f"Command: `{result['command']}`",
        "",
        f"Copy bandwidth (`dst.copy_(src)`, {result['copy']['bytes'] >> 20} MiB): "
        f"**{result['copy']['bandwidth_gbps']:.1f} GB/s** (median of {result['copy']['repeats']}).",
        f"Median of {s['repeats']} steps after {s['warmup']} warmup steps. Bandwidth = minimum bytes "
        "(param r+w, grad r, each state r+w) / median. `optdsl/this` = optdsl median / this median "
        "(< 1: optdsl faster).",
        "",
    ]
    cpu = dev["type"] == "cpu"
    if cpu:
        lines[-1] += (" `CPU ms` = process CPU time per step (all threads; it does not count time spent waiting for a "
                      "core on a shared machine; charged in scheduler ticks, so only its mean over the steps is given).")
    lines += [
        "",
        "| optimizer | shape | dtype | params | tensors | implementation | median ms | min ms |" + (" CPU ms |" if cpu else "")
        + " B/param | GB/s | % copy | optdsl/this |",
        "| --- | --- | --- | ---: | ---: | --- | ---: | ---: |" + (" ---: |" if cpu else "") + " ---: | ---: | ---: | ---: |",
    ]
    pad = "| | | | | | |" + (" |" if cpu else "")
    for entry in result["results"]:
        head = f"| {entry['spec']} | {entry['shape']} | {entry['dtype']} | {_fmt_size(entry['size'])} | {entry['tensors']} "
        if entry["status"] != "ok":
            lines.append(head + f"| skipped: {entry['reason']} " + pad)
            continue
        for row in entry["candidates"]:
            if row.get("status") != "ok":
                lines.append(head + f"| {row['name']}: {row.get('status')} ({row.get('reason', '')[:60]}) " + pad)
                continue
            note = " (state " + "/".join(row["state_dtypes"]) + ")" if entry["dtype"] != "fp32" else ""
            cpu_cell = (f"{row['cpu_s_per_step'] * 1e3:.3f} | " if "cpu_s_per_step" in row else "- | ") if cpu else ""
            lines.append(head + f"| {row['name']}{note} | {row['median_s'] * 1e3:.3f} | {row['min_s'] * 1e3:.3f} | {cpu_cell}"
                         f"{row['bytes_per_param']:.1f} | {row['bandwidth_gbps']:.1f} | {row['pct_copy_bandwidth']:.1f} | "
                         f"{row['optdsl_time_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result, path):
    """Bandwidth vs size, one panel per (optimizer, shape), a colour per implementation, dashed for
    bf16; returns False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = list(dict.fromkeys((e["spec"], e["shape"]) for e in result["results"]))
    cols = min(3, len(panels)) or 1
    rows = math.ceil(len(panels) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, (spec, shape) in zip(axes.flat, panels):
        series = {}
        for e in result["results"]:
            if (e["spec"], e["shape"]) != (spec, shape) or e["status"] != "ok":
                continue
            for row in e["candidates"]:
                if row.get("status") == "ok":
                    series.setdefault((row["name"], e["dtype"]), []).append((e["size"], row["bandwidth_gbps"]))
        names = list(dict.fromkeys(name for name, _ in series))
        for (name, dtype), points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=f"C{names.index(name) % 10}",
                    linestyle="-" if dtype == "fp32" else "--", label=f"{name} {dtype}")
        ax.axhline(result["copy"]["bandwidth_gbps"], color="gray", linestyle=":", label="copy bandwidth")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("effective GB/s")
        ax.set_title(f"{spec}, {shape}", fontsize=9)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(result["device"]["name"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def default_name(result):
    dev = result["device"]
    tag = "cpu" if dev["type"] == "cpu" else "cuda-" + re.sub(r"[^a-z0-9]+", "-", dev["name"].lower()).strip("-")
    specs = "-".join(dict.fromkeys(parse_spec(e["spec"])[0] for e in result["results"])) or "none"
    return f"{tag}-{specs}"


def write_outputs(result, out_dir, name=None, log=print, png=True):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or default_name(result)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n")
    paths["md"].write_text(markdown(result))
    if png:
        png_path = out_dir / f"{name}.png"
        if plot(result, png_path):
            paths["png"] = png_path
        else:
            log("matplotlib is not installed: no PNG plot (pip install -e '.[bench]')")
    for path in paths.values():
        log(f"wrote {path}")
    return paths


def add_arguments(parser):
    parser.add_argument("specs", nargs="+", help="spec stems (adamw) or spec files, optionally with "
                        "hyperparameters: sgd:momentum=0.9,nesterov=true")
    parser.add_argument("--sizes", nargs="+", default=["1M", "10M", "100M", "1B"],
                        help="total parameters (1M, 10M, 1e4, ...; default 1M 10M 100M 1B, skipped when they do not fit)")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per candidate (median)")
    parser.add_argument("--warmup", type=int, default=3)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--compile", dest="compile", action="store_true", default=None,
                       help="include torch.compile(opt.step) (default on CUDA only)")
    group.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--compile-max-tensors", type=int, default=2000,
                        help="skip torch.compile on lists longer than this (compile time grows with the list)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--copy-mib", type=int, default=None, help="copy-bandwidth buffer (default 1024 CUDA, 256 CPU)")
    parser.add_argument("--memory-fraction", type=float, default=0.6,
                        help="share of available memory a case may use (default 0.6)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: torch's default)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder")
    parser.add_argument("--name", default=None, help="output file stem (default: <device>-<specs>)")


def run_from_args(args):
    def progress(partial):  # JSON + markdown after every case: a run cut short keeps what it measured
        write_outputs(partial, args.out, args.name or default_name(partial), log=lambda *a: None, png=False)

    result = run_suite(args.specs, sizes=args.sizes, shapes=args.shapes, dtypes=args.dtypes, repeats=args.repeats,
                       warmup=args.warmup, compile=args.compile, device=args.device, lr=args.lr,
                       copy_mib=args.copy_mib, memory_fraction=args.memory_fraction,
                       threads=args.threads, compile_max_tensors=args.compile_max_tensors, progress=progress)
    write_outputs(result, args.out, args.name)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
