"""`optdsl verify`: run a spec's Triton kernels against its PyTorch reference on random tensors,
and its planned (simplified, hoisted, CSE'd) IR against a plain fp64 interpretation of the spec.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import itertools
import os
import sys
from dataclasses import dataclass

# Shapes straddle the 1024-element block, and include 0-dim and zero-size tensors.
SHAPES = ((33, 31), (1025,), (), (0, 4))
TOLERANCE = {"float32": 2e-6, "ir": 1e-10}


@dataclass
class Row:
    case: str
    errors: dict
    limit: float

    @property
    def ok(self) -> bool:
        return all(e <= self.limit for e in self.errors.values())


def _rel(a, b) -> float:
    import torch

    a, b = a.detach().double(), b.detach().double()
    if a.numel() == 0:
        return 0.0
    if not torch.equal(torch.isnan(a), torch.isnan(b)):
        return float("inf")
    diff = (a - b).nan_to_num(0.0).abs().max().item()
    return diff / max(b.nan_to_num(0.0).abs().max().item(), 1e-2) if diff else 0.0


def configurations(checked):
    """The defaults, each flag flipped alone, and every flag flipped."""
    flags = [h for h in checked.spec.hypers if h.is_flag]
    configs = [("defaults", {})]
    for flag in flags:
        configs.append((f"{flag.name}={not flag.default}", {flag.name: not flag.default}))
    if len(flags) > 1:
        configs.append(("all flags flipped", {f.name: not f.default for f in flags}))
    return configs


def verify_file(path, steps: int = 5, seed: int = 0, out=sys.stdout) -> bool:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the module's kernels are decorated
    from .compiler import compile_file, load_module
    from .interpret import evaluate_plan, interpret_step

    compiled = compile_file(path)
    module = load_module(path)
    optimizer_cls = getattr(module, compiled.checked.name)
    hyperparameters = module._hyperparameters
    variant_of = module._variant
    triton_ok = getattr(module, "triton", None) is not None

    rows: list[Row] = []
    for label, config in configurations(compiled.checked):
        # A flag flip the spec's own constraints reject (SGD's nesterov needs momentum) is skipped.
        try:
            optimizer_cls([torch.zeros(1, requires_grad=True)], **config)
        except ValueError as exc:
            rows.append(Row(f"{label}: skipped, invalid ({exc})", {}, 0.0))
            continue
        gen = torch.Generator().manual_seed(seed)
        base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]

        # Triton vs reference, float32.
        if triton_ok:
            runs = {}
            for backend in ("torch", "triton"):
                params = [b.float().to(device).requires_grad_() for b in base]
                opt = optimizer_cls(params, backend=backend, **config)
                worst: dict = {}
                for step_grads in grads:
                    for p, g in zip(params, step_grads):
                        p.grad = g.float().to(device)
                    opt.step()
                runs[backend] = (params, opt)
            (ref_params, ref_opt), (tri_params, tri_opt) = runs["torch"], runs["triton"]
            for a, b in zip(tri_params, ref_params):
                worst["param"] = max(worst.get("param", 0.0), _rel(a, b))
                for name, value in ref_opt.state[b].items():
                    if name != "step":
                        worst[name] = max(worst.get(name, 0.0), _rel(tri_opt.state[a][name], value))
            rows.append(Row(f"{label}: triton vs reference (fp32, {device})", worst, TOLERANCE["float32"]))

        # Planned IR vs the unsimplified spec, float64.
        params = [b.clone().requires_grad_() for b in base]
        opt = optimizer_cls(params, backend="torch", **config)
        worst = {}
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            group = opt.param_groups[0]
            h_group = hyperparameters(group)
            for p in params:
                state = opt.state[p]
                h = dict(h_group, step=float(state["step"]) + 1 if "step" in state else 1.0)
                for name in compiled.checked.fresh_states:
                    h[f"fresh_{name}"] = name not in state
                key = variant_of(h)
                _, touched, _ = module._VARIANTS[key]
                init = module._init_state
                tensors = {n: (state[n] if n in state else init(n, p, h)).double() for n in touched}
                expected = interpret_step(compiled.checked, p.detach(), p.grad, tensors, h)
                actual = evaluate_plan(compiled.plan, key, p.detach(), p.grad, tensors, h)
                for name, value in actual.items():
                    worst[name] = max(worst.get(name, 0.0), _rel(value, expected[name]))
            opt.step()
        rows.append(Row(f"{label}: planned IR vs spec (fp64)", worst, TOLERANCE["ir"]))

    _print(out, path, rows, triton_ok)
    return all(r.ok for r in rows)


def _print(out, path, rows, triton_ok):
    names = list(dict.fromkeys(itertools.chain.from_iterable(r.errors for r in rows)))
    width = max(len(r.case) for r in rows)
    print(f"{path}", file=out)
    if not triton_ok:
        print("  (triton is not installed: only the IR check ran)", file=out)
    header = f"  {'case':<{width}}  " + "  ".join(f"{n[:14]:>14}" for n in names) + "  result"
    print(header, file=out)
    for r in rows:
        cells = "  ".join(f"{r.errors[n]:>14.2e}" if n in r.errors else f"{'-':>14}" for n in names)
        print(f"  {r.case:<{width}}  {cells}  {'ok' if r.ok else f'FAIL (limit {r.limit:g})'}", file=out)
    failed = sum(not r.ok for r in rows)
    print(f"  {len(rows) - failed} passed, {failed} failed (max relative error per tensor)", file=out)
