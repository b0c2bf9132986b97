"""CPU reference path: generated/<opt>.py vs its hand-edited prototype (bench/prototypes/<opt>_inplace.py)
vs torch.optim, interleaved round by round, plus a correctness check of the prototype against
torch.optim (5 steps, fp32). Writes JSON.

    PYTHONPATH=. python bench/prototypes/measure.py [--optimizers sgd adamw] [--numel 10000000]
        [--repeats 30] [--threads 1] [--out bench/results/cpu-reference-prototype.json]
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

import generated.adam as generated_adam  # noqa: E402
import generated.adamw as generated_adamw  # noqa: E402
import generated.sgd as generated_sgd  # noqa: E402
from prototypes import adam_inplace, adamw_inplace, sgd_inplace  # noqa: E402
from suite import device_info, shape_numels, versions  # noqa: E402

OPTIMIZERS = {
    "sgd": (torch.optim.SGD, generated_sgd.SGD, sgd_inplace, {
        "SGD": {"lr": 1e-3},
        "SGD momentum 0.9": {"lr": 1e-3, "momentum": 0.9},
        "SGD momentum 0.9, weight_decay 1e-4, nesterov": {"lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4,
                                                          "nesterov": True},
    }),
    "adam": (torch.optim.Adam, generated_adam.Adam, adam_inplace, {
        "Adam": {},
        "Adam weight_decay 1e-2 (L2)": {"weight_decay": 1e-2},
    }),
    "adamw": (torch.optim.AdamW, generated_adamw.AdamW, adamw_inplace, {"AdamW": {}}),
}
MODES = ["torch for-loop", "torch foreach", "generated", "prototype inplace", "prototype inplace 256K"]
CHUNKS = {"prototype inplace": 1 << 16, "prototype inplace 256K": 1 << 18}  # CPU_CHUNK: generated's 64K, or 256K


def make(name, mode):
    torch_cls, generated_cls, prototype, _ = OPTIMIZERS[name]

    def build(params, **kw):
        if mode == "torch for-loop":
            return torch_cls(params, foreach=False, **kw)
        if mode == "torch foreach":
            return torch_cls(params, foreach=True, **kw)
        if mode == "generated":
            return generated_cls(params, backend="torch", **kw)
        opt = getattr(prototype, generated_cls.__name__)(params, backend="torch", **kw)
        opt._prototype = (prototype, "inplace", CHUNKS[mode])
        return opt
    return build


def step(opt):
    prototype = getattr(opt, "_prototype", None)
    if prototype is not None:
        prototype[0].MODE, prototype[0].CPU_CHUNK = prototype[1:]
    opt.step()


def check(name, config):
    """Max relative difference of the prototype vs torch.optim over 5 steps, fp32, params and state."""
    gen = torch.Generator().manual_seed(1)
    shapes = [200_000, 70_000, 3]  # above and below CPU_CHUNK
    ps_a = [torch.randn(n, generator=gen) for n in shapes]
    ps_b = [p.clone() for p in ps_a]
    for p in ps_a + ps_b:
        p.requires_grad_()
    ours, theirs = make(name, "prototype inplace")(ps_a, **config), make(name, "torch for-loop")(ps_b, **config)
    ours._prototype = (ours._prototype[0], "inplace", 1 << 16)
    worst = 0.0
    for _ in range(5):
        for a, b in zip(ps_a, ps_b):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        step(ours)
        step(theirs)
        for a, b in zip(ps_a, ps_b):
            pairs = [(a, b)] + [(ours.state[a][k], v) for k, v in theirs.state[b].items() if v.dim() > 0]
            for x, y in pairs:
                worst = max(worst, ((x - y).abs().max() / y.abs().max().clamp_min(1e-2)).item())
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--numel", type=int, default=10_000_000)
    parser.add_argument("--shapes", nargs="+", default=["one", "gpt2", "1000x64k"])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "cpu-reference-prototype.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = list(os.getloadavg())
    rows = []
    for name in args.optimizers:
        for label, config in OPTIMIZERS[name][3].items():
            error = check(name, config)
            for shape in args.shapes:
                numels = shape_numels(shape, args.numel)
                gen = torch.Generator().manual_seed(0)
                params = [torch.nn.Parameter(torch.randn(n, generator=gen)) for n in numels]
                for p in params:
                    p.grad = torch.randn(p.shape, generator=gen) * 1e-2
                opts = {mode: make(name, mode)(params, **config) for mode in MODES}
                for opt in opts.values():
                    for _ in range(3):
                        step(opt)
                times = {mode: [] for mode in MODES}
                cpu = {mode: 0.0 for mode in MODES}  # process CPU seconds: not inflated by waiting for a core
                for _ in range(args.repeats):
                    for mode, opt in opts.items():
                        start, start_cpu = time.perf_counter(), time.process_time()
                        step(opt)
                        times[mode].append(time.perf_counter() - start)
                        cpu[mode] += time.process_time() - start_cpu
                base = statistics.median(times["torch for-loop"])
                base_cpu = cpu["torch for-loop"]
                for mode in MODES:
                    median = statistics.median(times[mode])
                    rows.append({"optimizer": name, "config": label, "hyperparameters": config, "shape": shape,
                                 "tensors": len(numels), "numel": args.numel, "implementation": mode,
                                 "median_ms": median * 1e3, "min_ms": min(times[mode]) * 1e3,
                                 "ratio_to_torch_for_loop": median / base,
                                 "cpu_ms_per_step": cpu[mode] / args.repeats * 1e3,
                                 "cpu_ratio_to_torch_for_loop": cpu[mode] / base_cpu if base_cpu else None,
                                 "cpu_chunk": CHUNKS.get(mode, 1 << 16) if mode != "torch for-loop" and mode != "torch foreach" else None,
                                 "prototype_max_rel_diff_vs_torch_5_steps": error if mode.startswith("prototype") else None})
                    print(f"{label:46s} {shape:8s} {mode:22s} median {median * 1e3:7.2f} ms  min {min(times[mode]) * 1e3:7.2f} ms"
                          f"  / torch for-loop {median / base:5.2f}  CPU {cpu[mode] / args.repeats * 1e3:7.2f} ms"
                          f" / torch {cpu[mode] / base_cpu if base_cpu else float('nan'):5.2f}", flush=True)
                del opts, params
            print(f"{label}: prototype vs torch.optim, max relative difference over 5 steps: {error:.1e}", flush=True)
    result = {"what": "CPU step time: generated reference vs hand-edited in-place prototype vs torch.optim, "
                      "interleaved round by round (each round steps every implementation once)",
              "device": device_info(torch.device("cpu")), "versions": versions(), "threads": args.threads,
              "repeats": args.repeats, "statistic": "median", "command": " ".join(sys.argv),
              "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average_start": load_start,
              "load_average_end": list(os.getloadavg()), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
