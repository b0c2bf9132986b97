"""CPU step time of the generated reference path vs torch.optim's default CPU implementation
(the single-tensor for-loop; foreach is a CUDA default), one tensor, fp32. Writes JSON.

    python bench/cpu_reference.py [--sizes 1000000 10000000] [--repeats 7]
"""

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generated.adam import Adam  # noqa: E402
from generated.adamw import AdamW  # noqa: E402
from generated.sgd import SGD  # noqa: E402

CASES = [("Adam", Adam, torch.optim.Adam, {}), ("AdamW", AdamW, torch.optim.AdamW, {}),
         ("SGD momentum", SGD, torch.optim.SGD, {"momentum": 0.9})]


def median_step_seconds(make, numel, repeats):
    gen = torch.Generator().manual_seed(0)
    param = torch.randn(numel, generator=gen).requires_grad_()
    param.grad = torch.randn(numel, generator=gen)
    optimizer = make([param])
    optimizer.step()  # creates the state
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for numel in args.sizes:
        for name, ours, theirs, kwargs in CASES:
            torch_s = median_step_seconds(lambda ps: theirs(ps, foreach=False, **kwargs), numel, args.repeats)
            ours_s = median_step_seconds(lambda ps: ours(ps, backend="torch", **kwargs), numel, args.repeats)
            rows.append({"optimizer": name, "numel": numel, "torch_for_loop_ms": torch_s * 1e3,
                         "optdsl_reference_ms": ours_s * 1e3, "ratio": ours_s / torch_s})
            print(f"{name:13s} {numel:>11,d}  torch {torch_s * 1e3:8.2f} ms  optdsl {ours_s * 1e3:8.2f} ms  "
                  f"ratio {ours_s / torch_s:.2f}", flush=True)
    result = {"device": f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "dtype": "float32", "shape": "one tensor", "repeats": args.repeats, "statistic": "median",
              "date": time.strftime("%Y-%m-%d"), "rows": rows}
    out = ROOT / "bench" / "results" / "cpu-reference.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
