"""The pipeline in one place: parse → check → IR → plan → codegen, and `load` for in-memory use."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from . import ast, checker, codegen, ir, parser, plan
from .checker import CheckedSpec
from .plan import Plan


@dataclass
class Compiled:
    checked: CheckedSpec
    plan: Plan
    source: str  # the generated module
    module_name: str  # snake_case name, e.g. "adamw"


def check_file(path) -> CheckedSpec:
    spec = parser.parse_file(path)
    if isinstance(spec, ast.LossSpec):  # a loss rule: optdsl/loss_compiler.py
        from . import loss_compiler

        return loss_compiler.check_spec(spec)
    checked = checker.check(spec)
    codegen.check_names(checked)  # names that would clash in the generated module
    return checked


def compile_file(path, display_path: str | None = None) -> Compiled:
    path = Path(path)
    if parser.is_loss_file(path):  # a loss rule: optdsl/loss_compiler.py
        from . import loss_compiler

        return loss_compiler.compile_file(path, display_path)
    checked = check_file(path)
    planned = plan.plan(ir.lower(checked))
    spec_text = path.read_text(encoding="utf-8")
    shown = display_path or path.as_posix()
    source = codegen.render(planned, spec_text, shown)
    # The module is named after the spec file (specs/adamw.opt -> generated/adamw.py), as the
    # test records assume; snake_case of the class name would give "adam_w", "rm_sprop".
    module_name = path.stem if path.stem.isidentifier() else codegen.snake_case(checked.name)
    return Compiled(checked, planned, source, module_name)


def load_module(path):
    """Compile a spec in memory and import the generated module (not written to disk)."""
    compiled = compile_file(path)
    name = f"optdsl_generated.{compiled.module_name}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__file__ = f"<optdsl:{path}>"
    # Triton's JIT reads kernel source through linecache, so register the text under the fake path.
    import linecache

    lines = compiled.source.splitlines(keepends=True)
    linecache.cache[module.__file__] = (len(compiled.source), None, lines, module.__file__)
    sys.modules[name] = module
    exec(compile(compiled.source, module.__file__, "exec"), module.__dict__)
    return module


def load(path):
    """Compile a spec in memory and return its optimizer class (for a loss spec, its nn.Module)."""
    module = load_module(path)
    if getattr(module, "_INPUTS", None) is not None and hasattr(module, "_reference_backward"):
        from .loss_compiler import loss_class

        return loss_class(module)
    return _optimizer_class(module)


def _optimizer_class(module):
    import torch

    for value in vars(module).values():
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer:
            if value.__module__ == module.__name__:
                return value
    raise LookupError("generated module defines no optimizer")
