"""ATen dispatch counts of one optimizer step (torch.profiler) and minor page faults per step
(getrusage, mean of 3 steps): torch.optim's for-loop vs the generated CPU reference vs the in-place
prototype. Counts, unlike times, do not depend on machine load. Writes JSON.

    PYTHONPATH=. python bench/prototypes/dispatch_counts.py [--numel 10000000]
"""

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from torch.profiler import profile

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import generated.adamw as generated_adamw  # noqa: E402
import generated.sgd as generated_sgd  # noqa: E402
from prototypes import adamw_inplace, sgd_inplace  # noqa: E402
from suite import shape_numels, versions  # noqa: E402

# Bookkeeping ops that move no tensor data (views, dtype no-ops, scalar reads).
IGNORED = {"aten::to", "aten::slice", "aten::as_strided", "aten::view", "aten::empty_strided", "aten::_to_copy",
           "aten::empty", "aten::detach", "aten::lift_fresh", "aten::item", "aten::_local_scalar_dense",
           "aten::zeros_like", "aten::result_type"}

CASES = {
    "SGD": (torch.optim.SGD, generated_sgd.SGD, sgd_inplace.SGD, {"lr": 1e-3}),
    "SGD momentum 0.9": (torch.optim.SGD, generated_sgd.SGD, sgd_inplace.SGD, {"lr": 1e-3, "momentum": 0.9}),
    "AdamW": (torch.optim.AdamW, generated_adamw.AdamW, adamw_inplace.AdamW, {}),
}


def counts(make, shape, numel):
    params = [torch.nn.Parameter(torch.randn(n)) for n in shape_numels(shape, numel)]
    for p in params:
        p.grad = torch.randn(p.shape)
    opt = make(params)
    opt.step()
    opt.step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        opt.step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / 3
    with profile() as prof:
        opt.step()
    ops = {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key not in IGNORED}
    return dict(sorted(ops.items(), key=lambda kv: -kv[1])), faults


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-dispatch-counts.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    sgd_inplace.MODE = adamw_inplace.MODE = "inplace"  # the prototypes' 64 K chunks, as generated
    rows = []
    for label, (torch_cls, generated_cls, prototype_cls, config) in CASES.items():
        for shape in ("one", "1000x64k"):
            for impl, make in (("torch for-loop", lambda ps: torch_cls(ps, foreach=False, **config)),
                               ("generated", lambda ps: generated_cls(ps, backend="torch", **config)),
                               ("prototype inplace", lambda ps: prototype_cls(ps, backend="torch", **config))):
                ops, faults = counts(make, shape, args.numel)
                rows.append({"rule": label, "shape": shape, "numel": args.numel, "implementation": impl,
                             "dispatches": sum(ops.values()), "minor_page_faults_per_step": faults, "by_op": ops})
                print(f"{label:18s} {shape:9s} {impl:18s} {sum(ops.values()):6d} ops  {faults:8.0f} page faults"
                      f"  {ops}", flush=True)
    result = {"what": "ATen ops dispatched by one step (torch.profiler counts; views, dtype no-ops and scalar "
                      "reads left out; aten::copy_ includes wrapping Python-float operands into tensors)",
              "device": "cpu", "threads": 1, "versions": versions(), "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
