"""Loss rules, the pipeline: parse → `loss_ir.lower` (check, SymPy, gradients) → `loss_codegen`.

`compiler.compile_file` and `compiler.check_file` hand `loss` specs to this module, so the CLI
(`optdsl compile|check|verify`) and `optdsl.load` work for both kinds of spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import ast, loss_codegen, loss_ir, parser
from .errors import SpecError


@dataclass
class LossPlan:
    kernels: list = field(default_factory=list)  # kernel names (the CLI prints how many)


@dataclass
class CompiledLoss:
    checked: loss_ir.LossIR
    plan: LossPlan
    source: str
    module_name: str
    kind: str = "loss"


def check_spec(spec: ast.LossSpec) -> loss_ir.LossIR:
    return loss_ir.lower(spec)


def compile_file(path, display_path: str | None = None) -> CompiledLoss:
    path = Path(path)
    spec = parser.parse_file(path)
    if not isinstance(spec, ast.LossSpec):
        raise SpecError("expected a loss spec (`loss Name`)", None, str(path))
    ir = loss_ir.lower(spec)
    module_name = path.stem if path.stem.isidentifier() else loss_codegen.snake_case(ir.name)
    spec_text = path.read_text(encoding="utf-8")
    source = loss_codegen.render(ir, spec_text, display_path or path.as_posix(), module_name)
    kernels = [f"_{module_name}_forward_kernel", f"_{module_name}_backward_kernel"]
    return CompiledLoss(ir, LossPlan(kernels), source, module_name)


def loss_class(module):
    """The nn.Module class a generated loss module defines."""
    import torch

    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, torch.nn.Module) and value.__module__ == module.__name__:
            return value
    raise LookupError("generated module defines no loss class")


def verify_file(path, out, seed: int = 0) -> bool:
    """`optdsl verify` for a loss: the Triton kernels (interpreter on CPU) against the reference,
    value and gradient, for every reduction, float32 and float64, on random inputs built from the
    input roles. Prints the largest relative errors; returns whether all are within tolerance."""
    import torch

    from .compiler import load_module

    module = load_module(path)
    compiled_name = module.__name__.rsplit(".", 1)[-1]
    functional = next(v for k, v in vars(module).items()
                      if callable(v) and getattr(v, "__module__", None) == module.__name__
                      and k == loss_codegen.snake_case(loss_class(module).__name__))
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-10}
    ok = True
    for dtype in (torch.float32, torch.float64):
        gen = torch.Generator().manual_seed(seed)
        rows, classes = 4, 7
        shape = (rows, classes) if module._ROW else (3, 7)
        args = {}
        for name, role, default, _ in module._INPUTS:
            if role == "index":
                args[name] = torch.randint(0, classes, (rows,), generator=gen)
            elif role in ("weight", "class_weight"):
                size = (classes,) if role == "class_weight" else shape
                args[name] = torch.rand(size, dtype=dtype, generator=gen) + 0.5
            elif role == "target" and not module._ROW:
                args[name] = torch.rand(shape, dtype=dtype, generator=gen)
            else:
                args[name] = torch.randn(shape, dtype=dtype, generator=gen) * 2
        diff = [name for name, _, _, d in module._INPUTS if d]
        worst_value = worst_grad = 0.0
        for reduction in ("mean", "sum", "none"):
            results = []
            for backend in ("triton", "torch"):
                leaves = {k: v.clone().requires_grad_(k in diff) for k, v in args.items()}
                value = functional(**leaves, reduction=reduction, backend=backend)
                weights = torch.linspace(0.5, 1.5, value.numel(), dtype=value.dtype).reshape(value.shape)
                grads = torch.autograd.grad((value * weights).sum(), [leaves[k] for k in diff])
                results.append((value.detach(), grads))
            (v1, g1), (v2, g2) = results

            def rel(a, b):
                return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() if b.numel() else 0.0

            worst_value = max(worst_value, rel(v1, v2))
            worst_grad = max([worst_grad] + [rel(a, b) for a, b in zip(g1, g2)])
        good = worst_value <= tolerance[dtype] and worst_grad <= tolerance[dtype]
        ok = ok and good
        label = str(dtype).replace("torch.", "")
        print(f"{path}: {compiled_name} {label}: Triton vs reference, max relative error value "
              f"{worst_value:.1e}, gradient {worst_grad:.1e} {'ok' if good else 'MISMATCH'}", file=out)
    return ok
