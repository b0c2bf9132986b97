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
