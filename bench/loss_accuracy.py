"""Accuracy of the shipped loss rules (specs/losses/*.opt), CPU: for every loss, over every
setting in tests/loss_records.py and every reduction, the largest relative error (max |a - b| /
max |b|) of the value and of the gradients

* of the generated reference path (backend="torch": the spec's forward, the SymPy gradient)
  against the outside oracle (torch.nn.functional or a transcription), fp32 and fp64;
* of the Triton kernels (Triton's interpreter) against the reference, fp32 and fp64.

Usage: TRITON_INTERPRET=1 python bench/loss_accuracy.py [--out bench/results/loss-accuracy-cpu.md]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from loss_records import LOSSES, hypers_of, split_config  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() if b.numel() else 0.0


def evaluate(fn, x, diff):
    leaves = {k: (v.detach().clone().requires_grad_(k in diff) if v.is_floating_point() else v) for k, v in x.items()}
    out = fn(leaves)
    weights = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weights).sum(), [leaves[k] for k in diff])
    return out.detach(), grads


def measure(info):
    module = info.load()
    functional = getattr(module, info.functional)
    row = {}
    for label, dtype in DTYPES.items():
        worst = {"oracle_value": 0.0, "oracle_grad": 0.0, "triton_value": 0.0, "triton_grad": 0.0}
        for config in info.configs:
            for seed in range(3):
                x, cfg = split_config(info, config, info.make(dtype, torch.Generator().manual_seed(seed), 1.0))
                h = hypers_of(info, module, cfg)
                diff = [n for n, _, _, d in module._INPUTS if d and n in x]
                for reduction in ("mean", "sum", "none"):
                    def generated(backend):
                        return lambda l: functional(**l, **cfg, reduction=reduction, backend=backend)

                    ref_v, ref_g = evaluate(generated("torch"), x, diff)
                    tri_v, tri_g = evaluate(generated("triton"), x, diff)
                    ora_v, ora_g = evaluate(lambda l: info.oracle(l, h, reduction), x, diff)
                    worst["oracle_value"] = max(worst["oracle_value"], rel(ref_v, ora_v))
                    worst["oracle_grad"] = max([worst["oracle_grad"]] + [rel(a, b) for a, b in zip(ref_g, ora_g)])
                    worst["triton_value"] = max(worst["triton_value"], rel(tri_v, ref_v))
                    worst["triton_grad"] = max([worst["triton_grad"]] + [rel(a, b) for a, b in zip(tri_g, ref_g)])
        row[label] = worst
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    lines = [
        "| loss | oracle | value vs oracle fp32 / fp64 | gradient vs oracle fp32 / fp64 | Triton vs reference value fp32 / fp64 | Triton vs reference gradient fp32 / fp64 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for info in LOSSES:
        r = measure(info)
        cell = lambda key: f"{r['fp32'][key]:.1e} / {r['fp64'][key]:.1e}"  # noqa: E731
        lines.append(f"| {info.cls} | {info.oracle_name} | {cell('oracle_value')} | {cell('oracle_grad')} | "
                     f"{cell('triton_value')} | {cell('triton_grad')} |")
        print(lines[-1], flush=True)
    text = ("Largest relative error (max |a - b| / max |b|) over every setting in tests/loss_records.py, "
            "3 random input sets and the three reductions; CPU, Triton kernels in the interpreter. "
            "Produced by `python bench/loss_accuracy.py`.\n\n" + "\n".join(lines) + "\n")
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
