"""What one optimizer step launches on a GPT-2-small-shaped parameter list, per shipped spec.

Counts, not times: Triton kernel launches and torch ops that would each be a device kernel on a
GPU (the counter of tests/launches.py), for the third step (state exists, nothing is new), float32,
the record's last config (tests/records*.py). The parameters have GPT-2 small's structure (148
tensors: embeddings, per layer two LayerNorms, attention and MLP weights and biases; the real
2-D shapes, so rules that treat matrices and vectors differently do so) at small widths, so the
kernels run in Triton's CPU interpreter. Multi-tensor launches do not depend on the widths, only
on the tensors, their dtypes and alignment; the per-tensor path (rules that reduce per row or
column) runs a tensor of at most BLOCK_SIZE elements as one fused kernel, so at these widths it
launches fewer kernels than at GPT-2 small's.

    TRITON_INTERPRET=1 python bench/launch_counts.py [--out bench/results] [--name launch-counts]

Writes <name>.json (per spec: kernels and ops, by name) and <name>.md.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from launches import count_launches  # noqa: E402
from records import ALL_RECORDS  # noqa: E402
from test_launches import _gradients  # noqa: E402


def gpt2_shapes(d=16, ff=64, vocab=96, ctx=32, layers=12):
    """GPT-2 small's 148 parameter shapes (lm_head tied to wte) at widths small enough to interpret."""
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,)]
    return shapes + [(d,), (d,)]


def count(record, shapes):
    module = importlib.import_module(f"generated.{record.spec}")
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).requires_grad_() for s in shapes]
    opt = record.generated(params, backend="triton", **record.configs[-1])
    for step in (1, 2, 3):
        kwargs = _gradients(record, params, step)
        if step < 3:
            opt.step(**kwargs)
    with count_launches(module, opt) as (kernels, ops):
        opt.step(**kwargs)
    return dict(kernels), dict(ops)


def markdown(result):
    lines = [f"# Launches per step: {result['shapes']}", "",
             f"Commit {result['commit']}, torch {result['torch']}, triton {result['triton']}, {result['date']}. "
             "Third step, float32, each record's last config; kernels = Triton launches, ops = torch ops "
             "that are each a device kernel on a GPU.", "",
             "| spec | kernels | torch ops |", "|---|---|---|"]
    for spec, row in result["specs"].items():
        lines.append(f"| {spec} | {sum(row['kernels'].values())} | {sum(row['ops'].values())} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--name", default="launch-counts-gpt2")
    args = parser.parse_args()
    import triton

    shapes = gpt2_shapes()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    result = dict(
        shapes=f"GPT-2 small structure, {len(shapes)} tensors, {sum(torch.Size(s).numel() for s in shapes)} elements "
               "(d=16, ff=64, vocab=96, ctx=32)",
        commit=commit, torch=torch.__version__, triton=triton.__version__, python=platform.python_version(),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device="CPU (Triton interpreter): counts only, no times", specs={},
    )
    for record in ALL_RECORDS:
        kernels, ops = count(record, shapes)
        result["specs"][record.spec] = dict(kernels=kernels, ops=ops)
        print(f"{record.spec}: {sum(kernels.values())} kernels, {sum(ops.values())} ops", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{args.name}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
