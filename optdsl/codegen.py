"""Codegen stage: render a planned spec into one Python module (reference + Triton + Optimizer)."""

from __future__ import annotations

import builtins
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2
import sympy

from . import __version__, ast
from .ast import ELEMENT, HOST
from .checker import CheckedSpec
from .errors import SpecError
from .plan import KernelPlan, Plan
from .printers import HOST_HELPERS, HOST_HELPER_DEPENDENCIES, TRITON_HELPERS, HostPrinter, ReferencePrinter, TritonPrinter, float_literal

TORCH_DTYPES = {"float16": "torch.float16", "bfloat16": "torch.bfloat16", "float32": "torch.float32", "float64": "torch.float64"}


# Names that would clash with the generated module's own. A hyperparameter (or a component of a
# tuple hyperparameter) becomes a keyword argument of `Optimizer.__init__(self, params, ...,
# *, backend)` and a variable in `_validate` (which keeps a tuple in `value`), in
# `_hyperparameters`, the launchers, the kernels and `_variant`, which call Python builtins
# (bool, float, isinstance, len, super, ...): so none of those. A state is a variable in the
# kernels, which write infinities as float("inf"). `fresh_<state>` holds fresh(<state>) in the
# reference. The optimizer class is a module global, so it may not take the name of a builtin or
# of another global (`CPU_CHUNK`). Locals need no rule: the planner renames them in the kernels.
PYTHON_BUILTINS = frozenset(dir(builtins)) | {"exit", "quit", "copyright", "credits", "license", "help"}
GENERATED_NAMES = frozenset({"params", "backend", "value"})
MODULE_GLOBALS = frozenset({"CPU_CHUNK", "BLOCK_SIZE", "annotations"})


def check_names(checked: CheckedSpec) -> None:
    """Raise a located `SpecError` for a name that would clash in the generated module."""
    spec = checked.spec
    fresh = {f"fresh_{s}": s for s in checked.state_names}

    def assigned(statements):
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                yield stmt.target, stmt.pos
            else:
                for _, body in stmt.branches:
                    yield from assigned(body)
                yield from assigned(stmt.orelse)

    def reject(name, pos, why):
        raise SpecError(f"{name!r} is reserved: {why}; choose another name", pos).located(spec.path, spec.source)

    if spec.name in PYTHON_BUILTINS or spec.name in MODULE_GLOBALS:
        reject(spec.name, spec.name_pos, "the optimizer class would replace a name the generated module uses")
    for hyper in spec.hypers:
        for name in (hyper.name, *(hyper.components or ())):
            if name in PYTHON_BUILTINS:
                reject(name, hyper.pos, "a hyperparameter may not shadow a Python builtin in the generated module")
            if name in GENERATED_NAMES:
                reject(name, hyper.pos, "the generated module uses this name itself")
    for state in spec.states:
        if state.name == "float":
            reject(state.name, state.pos, "the generated kernels call float()")
    names = [(h.name, h.pos) for h in spec.hypers] + [(c, h.pos) for h in spec.hypers for c in h.components or ()]
    for name, pos in names + [(s.name, s.pos) for s in spec.states] + list(assigned(checked.body)):
        if name in fresh:
            reject(name, pos, f"the generated module holds fresh({fresh[name]}) under this name")


def _comment_text(text: str) -> str:
    """`text` for a `#` comment: characters that could end the comment line are escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def snake_case(name: str) -> str:
    text = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    text = re.sub(r"(?<=[A-Z])([A-Z][a-z])", r"_\1", text)
    return text.lower()


@dataclass
class KernelView:
    """A kernel plan with its source text, ready for the template."""

    plan: KernelPlan
    kernel_name: str
    launcher_name: str
    tensors: list[str]
    loads: list[str]
    stores: list[tuple[str, str]]  # tensor, printed value
    body: list[tuple[str, str]]
    host_defs: list[tuple[str, str]]
    host_inputs: list[str]
    scalar_args: list[str]


def _python_string(text: str) -> str:
    """A docstring body that cannot end the string it sits in."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def render(plan: Plan, spec_text: str, spec_path: str) -> str:
    checked: CheckedSpec = plan.lowered.checked
    spec = checked.spec
    check_names(checked)
    prefix = f"_{snake_case(spec.name)}"
    triton_printer = TritonPrinter()
    host_printer = HostPrinter()
    ref_printer = ReferencePrinter()

    kernels = []
    for plan_kernel in plan.kernels:
        suffix = f"_{plan_kernel.suffix}" if plan_kernel.suffix else ""
        body = [(str(sym), triton_printer.doprint(expr)) for sym, expr in plan_kernel.body]
        stores = []
        per_element = set(plan.lowered.element_symbols) | {sym for sym, _ in plan_kernel.body}
        for name, value in plan_kernel.outputs.items():
            text = triton_printer.doprint(value)
            if not value.free_symbols & per_element:  # a host scalar stored into every element
                text = f"tl.full((BLOCK_SIZE,), {text}, tl.float32)"
            stores.append((name, text))
        host_defs = [(str(sym), host_printer.doprint(expr)) for sym, expr in plan_kernel.host_defs]
        kernels.append(KernelView(
            plan_kernel, f"{prefix}_kernel{suffix}", f"{prefix}_launch{suffix}", plan_kernel.tensors,
            plan_kernel.loads, stores, body, host_defs, plan_kernel.host_inputs, plan_kernel.scalar_args,
        ))

    variant_rows = []
    for key in (k for kernel in plan.kernels for k in kernel.keys):
        kernel = next(v for v in kernels if tuple(key) in v.plan.keys)
        # The reference runs the spec as written, so it also reads states the IR simplified away.
        read = _state_reads(checked, key)
        touched = [s for s in checked.state_names if s in kernel.tensors or s in read]
        writes = [t for t in kernel.plan.stores]
        variant_rows.append((key, kernel.launcher_name, touched, writes))
    variant_rows.sort(key=lambda row: [not b for b in row[0]])

    conditions = [host_printer.doprint(c) for c in plan.lowered.conditions]
    condition_inputs = sorted({s.name for c in plan.lowered.conditions for s in c.free_symbols},
                              key=lambda n: _host_order(checked).index(n) if n in _host_order(checked) else 0)

    reference_lines = _reference_body(checked, ref_printer)
    reference_inputs = [n for n in _host_order(checked) if re.search(rf"\b{n}\b", "\n".join(reference_lines))]

    hypers = []
    for hyper in spec.hypers:
        if hyper.constraint is not None:
            constraint = ref_printer.expr(hyper.constraint)
        else:
            constraint = None
        hypers.append(dict(
            name=hyper.name,
            default=_default_literal(hyper.default),
            components=hyper.components,
            kind="flag" if hyper.is_flag else ("tuple" if hyper.components else "number"),
            constraint=constraint,
        ))

    states = []
    for state in spec.states:
        dtype = TORCH_DTYPES[state.dtype] if state.dtype else None
        if isinstance(state.init, ast.Name) and state.init.id == "param":
            init = "param.detach().clone(memory_format=torch.preserve_format)"
            if dtype:
                init += f".to({dtype})"
        else:
            value = ref_printer.expr(state.init)
            dtype_arg = f", dtype={dtype}" if dtype else ""
            if isinstance(state.init, ast.Number) and state.init.value == 0:
                init = f"torch.zeros_like(param, memory_format=torch.preserve_format{dtype_arg})"
            else:
                # A complex parameter is updated as its real view, so both parts of each element
                # start at the constant (as torch.optim.Adagrad's initial_accumulator_value does).
                fill = value if dtype else f"complex({value}, {value}) if param.is_complex() else {value}"
                init = f"torch.full_like(param, {fill}, memory_format=torch.preserve_format{dtype_arg})"
        init_inputs = [n for n in checked.hyper_scalars if re.search(rf"\b{n}\b", init)]
        states.append(dict(name=state.name, init=init, inputs=init_inputs, dtype=dtype))

    triton_helpers = [TRITON_HELPERS[h] for h in sorted(triton_printer.helpers)]
    host_needed = set(host_printer.helpers) | set(ref_printer.helpers)
    for helper in list(host_needed):
        host_needed.update(HOST_HELPER_DEPENDENCIES.get(helper, ()))
    host_helpers = [HOST_HELPERS[h] for h in sorted(host_needed)]

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("optdsl", "templates"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    env.filters["pystr"] = _python_string
    env.filters["tuple_literal"] = _tuple_literal
    env.filters["fstring_text"] = lambda text: text.replace("{", "{{").replace("}", "}}")
    env.filters["add_suffix"] = lambda text, suffix: f"{text}{suffix}"
    env.filters["tensor_arg"] = lambda t: t if t in ("param", "grad") else f'state["{t}"]'
    env.filters["as_bool"] = lambda c: c if c in ("True", "False") else f"bool({c})"
    template = env.get_template("module.py.j2")
    text = template.render(
        version=__version__,
        spec_path=_comment_text(spec_path),
        spec_hash=hashlib.sha256(spec_text.encode()).hexdigest(),
        name=spec.name,
        prefix=prefix,
        doc=spec.doc,
        hypers=hypers,
        states=states,
        typed_states=[s for s in states if s["dtype"]],
        counts_steps=checked.counts_steps,
        fresh_states=checked.fresh_states,
        kernels=kernels,
        variant_rows=variant_rows,
        conditions=conditions,
        condition_inputs=condition_inputs,
        reference_lines=reference_lines,
        reference_inputs=reference_inputs,
        reference_states=checked.state_names,
        assigned=["param"] + [s for s in checked.state_names if any(s in k.plan.stores for k in kernels)],
        triton_helpers=triton_helpers,
        host_helpers=host_helpers,
    )
    return re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines, as PEP 8


def _state_reads(checked: CheckedSpec, key) -> set[str]:
    """States whose values the update reads on the path that variant `key` takes."""
    index = {id(c): i for i, c in enumerate(checked.conditions)}
    states = set(checked.state_names)
    found: set[str] = set()

    def names(e):
        if isinstance(e, ast.Name) and e.id in states:
            found.add(e.id)
        elif isinstance(e, ast.Call) and e.func != "fresh":  # fresh(s) asks whether s exists yet
            for a in e.args:
                names(a)
        elif isinstance(e, (ast.Unary, ast.Binary, ast.Compare)):
            for child in (e.operands if isinstance(e, ast.Compare) else
                          [e.operand] if isinstance(e, ast.Unary) else [e.left, e.right]):
                names(child)

    def walk(statements):
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                names(stmt.value)
                continue
            taken = next((body for cond, body in stmt.branches if key[index[id(cond)]]), stmt.orelse)
            walk(taken)

    walk(checked.body)
    return found


def _tuple_literal(items, quote=True) -> str:
    parts = [f'"{i}"' if quote else str(i) for i in items]
    if len(parts) == 1:
        return f"({parts[0]},)"
    return "(" + ", ".join(parts) + ")"


def _host_order(checked: CheckedSpec) -> list[str]:
    return list(checked.hyper_scalars) + ["step"] + [f"fresh_{s}" for s in checked.fresh_states]


def _default_literal(value) -> str:
    if isinstance(value, bool):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_default_literal(v) for v in value) + ")"
    if float(value).is_integer() and abs(value) < 1e15:
        return repr(int(value))
    return float_literal(value)


def _reference_body(checked: CheckedSpec, printer: ReferencePrinter) -> list[str]:
    """The update as Python statements. Every element-kind name holds a tensor: a state or `param`
    assigned a host value, and a local that is a host value on one path of an `if` but a tensor on
    another, are broadcast with `torch.full_like(grad, ...)`."""
    tensors = {"param", *checked.state_names}

    def emit(statements, depth, kinds) -> list[str]:
        indent = "    " * depth
        lines: list[str] = []
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                value = printer.expr(stmt.value)
                if stmt.target in tensors and stmt.value.kind != ELEMENT:
                    value = f"torch.full_like(grad, {value})"
                kinds[stmt.target] = ELEMENT if stmt.target in tensors else stmt.value.kind
                lines.append(f"{indent}{stmt.target} = {value}")
                continue
            paths = list(stmt.branches) + [(None, stmt.orelse)]
            scopes = [dict(kinds) for _ in paths]
            bodies = [emit(body, depth + 1, scope) for (_, body), scope in zip(paths, scopes)]
            # After the `if`, a name is defined when every path defines it, as the checker has it.
            joined = {}
            for name in set.intersection(*(set(scope) for scope in scopes)):
                joined[name] = ELEMENT if any(scope[name] == ELEMENT for scope in scopes) else HOST
            for name in sorted(n for n, kind in joined.items() if kind == ELEMENT):
                for scope, body in zip(scopes, bodies):
                    if scope[name] != ELEMENT:
                        body.append(f"{indent}    {name} = torch.full_like(grad, {name})")
            kinds.clear()
            kinds.update(joined)
            for i, ((cond, _), body) in enumerate(zip(paths, bodies)):
                if cond is None:
                    if body:
                        lines += [f"{indent}else:", *body]
                    continue
                lines.append(f"{indent}{'if' if i == 0 else 'elif'} {printer.expr(cond)}:")
                lines += body or [f"{indent}    pass"]
        return lines

    kinds = {name: HOST for name in _host_order(checked)}
    kinds.update({name: ELEMENT for name in ("param", "grad", *checked.state_names)})
    return emit(checked.body, 1, kinds)
