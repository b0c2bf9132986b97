"""Accuracy and launch report: for every spec record, the largest relative error of the reference
against its oracle (fp64, fp32; 25 steps), of the Triton kernels against the reference (fp32; bf16
per step), and what one step launches (Triton kernels and device torch ops, counted on the
record's shapes). Writes JSON and a markdown table.

    python bench/accuracy.py            # CPU: kernels run in Triton's interpreter
"""

import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import triton  # noqa: E402

from harness import lockstep, make_grads, make_params  # noqa: E402
from launches import count_launches  # noqa: E402
from records import ALL_RECORDS  # noqa: E402
from test_triton import SHAPES as TRITON_SHAPES, _all_states  # noqa: E402

import importlib  # noqa: E402

import optdsl  # noqa: E402
from optdsl.compiler import compile_file  # noqa: E402


def worst(errors):
    return max(errors.values()) if errors else 0.0


def launches(record, steps=3):
    """Triton kernels and device torch ops of step `steps` (state already created), fp32, on the
    record's shapes, with its last config (every flag it sets)."""
    module = importlib.import_module(f"generated.{record.spec}")
    params = make_params(record.shapes, torch.float32)
    opt = record.generated(params, backend="triton", **record.configs[-1])
    for step in range(1, steps + 1):
        kwargs = {}
        if record.loss_fn is not None:
            for p in params:
                p.grad = None
            with torch.enable_grad():
                loss = record.loss_fn(params, step, 0)
                loss.backward()
            kwargs["loss"] = loss.detach()
        else:
            for p, g in zip(params, make_grads(params, step)):
                p.grad = g
        if step < steps:
            opt.step(**kwargs)
            continue
        with count_launches(module, opt) as (kernels, ops):
            opt.step(**kwargs)
    return {"launch_shapes": [list(s) for s in record.shapes], "triton_launches": sum(kernels.values()),
            "torch_ops": sum(ops.values()), "torch_ops_by_name": dict(ops)}


def main():
    rows = []
    for record in ALL_RECORDS:
        cls = record.generated
        row = {"spec": record.spec, "class": record.cls}
        oracle = record.oracle
        if isinstance(oracle, type):
            row["oracle"] = f"{oracle.__module__.split('.')[0]}.{oracle.__name__}"
        else:
            row["oracle"] = getattr(oracle, "__name__", repr(oracle))
        row["notes"] = record.notes
        for dtype, key in ((torch.float64, "oracle_fp64"), (torch.float32, "oracle_fp32")):
            row[key] = max(
                worst(lockstep(
                    lambda ps, c=config: record.oracle(ps, **(record.oracle_kwargs(c) if record.oracle_kwargs else c)),
                    lambda ps, c=config: cls(ps, backend="torch", **c),
                    record.shapes, dtype, 25,
                    {theirs: ours for ours, theirs in (record.state_map or {}).items()},
                    loss_fn=record.loss_fn,
                ))
                for config in record.configs
            )
        for dtype, key, resync in ((torch.float32, "triton_fp32", False), (torch.bfloat16, "triton_bf16_per_step", True)):
            row[key] = max(
                worst(lockstep(
                    lambda ps, c=config: cls(ps, backend="torch", **c),
                    lambda ps, c=config: cls(ps, backend="triton", **c),
                    TRITON_SHAPES, dtype, 4, {s: s for s in _all_states(cls, config, record.loss_fn is not None)},
                    resync=resync, loss_fn=record.loss_fn,
                ))
                for config in record.configs
            )
        compiled = compile_file(ROOT / "specs" / f"{record.spec}.opt")
        row["kernel_variants"] = len(compiled.plan.kernels)
        row["staged"] = compiled.plan.lowered.staged
        row.update(launches(record))
        rows.append(row)
        print(f"{record.spec:12s} oracle fp64 {row['oracle_fp64']:.1e} fp32 {row['oracle_fp32']:.1e}  "
              f"triton fp32 {row['triton_fp32']:.1e} bf16 {row['triton_bf16_per_step']:.1e}", flush=True)

    result = {
        "what": "max relative error per tensor (|a-b|max / max(|b|max, 1e-2)) over params and every state, every step",
        "device": "cpu (Triton interpreter, TRITON_INTERPRET=1)",
        "machine": platform.platform(),
        "versions": {"optdsl": optdsl.__version__, "torch": torch.__version__, "triton": triton.__version__,
                     "python": platform.python_version()},
        "oracle_steps": 25,
        "triton_steps": 4,
        "shapes": {"oracle": "per record (default (7, 13), (129,), ())", "triton": [list(s) for s in TRITON_SHAPES]},
        "date": time.strftime("%Y-%m-%d"),
        "specs": rows,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy-cpu.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Accuracy (CPU, Triton interpreter)",
        "",
        f"torch {torch.__version__}, triton {triton.__version__}, {result['date']}. Command: `python bench/accuracy.py`.",
        "Max relative error per tensor over params and every state, every step (oracle: 25 steps; Triton: 4 steps,",
        "bf16 restarted from identical values each step). Limits: fp64 1e-10, fp32 1e-5, Triton fp32 2e-6, bf16 1.6e-2.",
        "",
        "Launches: one step (the third, fp32, the record's last config) on the record's shapes (a list of",
        "tensors, usually (7, 13), (129,), ()): Triton kernels, and torch ops that are a device kernel each",
        "on a GPU (not views, allocations, or the CPU step counters). Elementwise specs launch one kernel per",
        "tensor; a staged spec (reductions, row/column/scalar state, `loss`) one per reduction level plus",
        "the update, and torch ops that finish the reductions and write row/column/scalar state.",
        "",
        "| spec | oracle | fp64 | fp32 | Triton fp32 | Triton bf16 | tensors | Triton launches | torch ops |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['spec']} | {r['oracle']} | {r['oracle_fp64']:.1e} | {r['oracle_fp32']:.1e} | "
                     f"{r['triton_fp32']:.1e} | {r['triton_bf16_per_step']:.1e} | {len(r['launch_shapes'])} | "
                     f"{r['triton_launches']} | {r['torch_ops']} |")
    (out / "accuracy-cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
