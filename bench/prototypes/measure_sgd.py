"""SGD CPU reference path: generated/sgd.py vs the hand-edited prototype (bench/prototypes/sgd_inplace.py)
vs torch.optim.SGD, interleaved round by round, plus a correctness check of the prototype. Writes JSON.

    PYTHONPATH=. python bench/prototypes/measure_sgd.py [--numel 10000000] [--repeats 30] [--threads 1]
"""

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import generated.sgd as generated_sgd  # noqa: E402
from prototypes import sgd_inplace  # noqa: E402
from suite import device_info, shape_numels, versions  # noqa: E402


def make(mode):
    def build(params, **kw):
        if mode == "torch for-loop":
            return torch.optim.SGD(params, foreach=False, **kw)
        if mode == "torch foreach":
            return torch.optim.SGD(params, foreach=True, **kw)
        if mode == "generated":
            return generated_sgd.SGD(params, backend="torch", **kw)
        opt = sgd_inplace.SGD(params, backend="torch", **kw)
        opt._mode = mode.split()[-1]
        return opt
    return build


MODES = ["torch for-loop", "torch foreach", "generated", "prototype fused", "prototype inplace"]


def step(opt):
    mode = getattr(opt, "_mode", None)
    if mode is not None:
        sgd_inplace.MODE = mode
    opt.step()


def check(config):
    """Max relative difference of the prototype (both modes) vs torch.optim.SGD over 5 steps, fp32."""
    out = {}
    for mode in MODES[3:]:
        gen = torch.Generator().manual_seed(1)
        shapes = [200_000, 70_000, 3]  # above and below CPU_CHUNK
        ps_a = [torch.randn(n, generator=gen) for n in shapes]
        ps_b = [p.clone() for p in ps_a]
        for p in ps_a + ps_b:
            p.requires_grad_()
        ours, theirs = make(mode)(ps_a, **config), make("torch for-loop")(ps_b, **config)
        worst = 0.0
        for _ in range(5):
            for a, b in zip(ps_a, ps_b):
                g = torch.randn(a.shape, generator=gen)
                a.grad, b.grad = g.clone(), g.clone()
            step(ours)
            step(theirs)
            for a, b in zip(ps_a, ps_b):
                worst = max(worst, ((a - b).abs().max() / b.abs().max().clamp_min(1e-2)).item())
        out[mode] = worst
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-sgd-prototype.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = {"SGD": {"lr": 1e-3}, "SGD momentum 0.9": {"lr": 1e-3, "momentum": 0.9},
               "SGD momentum 0.9, weight_decay 1e-4, nesterov": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                                                                  "nesterov": True}}
    rows = []
    for label, config in configs.items():
        errors = check(config)
        for shape in ("one", "gpt2"):
            numels = shape_numels(shape, args.numel)
            gen = torch.Generator().manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in numels]
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen) * 1e-2
            opts = {mode: make(mode)(params, **config) for mode in MODES}
            for opt in opts.values():
                for _ in range(3):
                    step(opt)
            times = {mode: [] for mode in MODES}
            for _ in range(args.repeats):
                for mode, opt in opts.items():
                    start = time.perf_counter()
                    step(opt)
                    times[mode].append(time.perf_counter() - start)
            base = statistics.median(times["torch for-loop"])
            for mode in MODES:
                median = statistics.median(times[mode])
                rows.append({"config": label, "hyperparameters": config, "shape": shape, "tensors": len(numels),
                             "numel": args.numel, "implementation": mode, "median_ms": median * 1e3,
                             "min_ms": min(times[mode]) * 1e3, "ratio_to_torch_for_loop": median / base,
                             "max_rel_diff_vs_torch_5_steps": errors.get(mode)})
                print(f"{label:46s} {shape:4s} {mode:18s} median {median * 1e3:7.2f} ms  min {min(times[mode]) * 1e3:7.2f} ms"
                      f"  / torch for-loop {median / base:5.2f}", flush=True)
            del opts, params
    result = {"what": "SGD CPU step time: generated reference vs prototype fix vs torch.optim.SGD, interleaved",
              "device": device_info(torch.device("cpu")), "versions": versions(), "threads": args.threads,
              "repeats": args.repeats, "statistic": "median", "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_end": list(os.getloadavg()), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
