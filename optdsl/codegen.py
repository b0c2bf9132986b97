"""Codegen stage: render a planned spec into one Python module (reference + Triton + Optimizer)."""

from __future__ import annotations

import builtins
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import sympy

from . import __version__, ast
from .ast import ELEMENT, HOST, none_flag
from .ast import COL, ROW, UNIFORM
from .checker import TENSOR_VALUES, CheckedSpec
from .errors import SpecError
from .plan import KernelPlan, Plan
from .inplace import InplaceAssignments, alias_map
from .printers import (HOST_HELPERS, HOST_HELPER_DEPENDENCIES, TRITON_HELPERS, HostPrinter, ReferencePrinter, ScalarPrinter,
                       TritonPrinter, float_literal)

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
    engine: dict = None  # multi-tensor kernel: see _engine_kernel


def _python_string(text: str) -> str:
    """A docstring body that cannot end the string it sits in."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def render(plan: Plan, spec_text: str, spec_path: str) -> str:
    checked: CheckedSpec = plan.lowered.checked
    spec = checked.spec
    check_names(checked)
    prefix = f"_{snake_case(spec.name)}"
    triton_printer = TritonPrinter()
    scalar_printer = ScalarPrinter()
    host_printer = HostPrinter()
    staged = dict(staged_variants=[], global_view=None)
    global_texts = {}
    if plan.staged:
        from .printers import TorchPrinter

        staged = staged_views(plan, prefix, triton_printer, host_printer)
        printer = TorchPrinter({r.symbol for r in plan.global_reductions})
        global_texts = {key: printer.doprint(value) for key, value in plan.global_values.items()}
    ref_printer = ReferencePrinter(global_texts)

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
        if not plan.staged:
            kernels[-1].engine = _engine_kernel(plan_kernel, checked, scalar_printer)

    variant_rows = []
    for view in staged["staged_variants"]:
        plan_staged = view["staged"]
        used = set(plan_staged.final.tensors) | {g for g, _ in plan_staged.final.gathers} | set(plan_staged.final.uniforms)
        for kind, item in plan_staged.passes:
            if kind == "kernel":
                used |= set(item.loads) | {g for g, _ in item.gathers} | set(item.uniforms)
        used |= set(view["state_locals"]) | set(plan_staged.device_outputs) | set(plan_staged.host_outputs)
        writes = list(plan_staged.final.stores) + list(plan_staged.device_outputs) + list(plan_staged.host_outputs)
        multi = view["multi"]
        multi_text = (f"({multi.launcher_name}, {_tuple_literal(multi.columns)}, {_tuple_literal(multi.host_inputs)}, "
                      f"{multi.host_states_name}, {multi.reduces})" if multi else "None")
        for key in plan_staged.keys:
            touched = [s for s in checked.state_names if s in used or s in _state_reads(checked, key)]
            variant_rows.append((key, view["launcher_name"], touched, writes, multi_text))
    for key in (k for kernel in plan.kernels for k in kernel.keys if not plan.staged):
        kernel = next(v for v in kernels if tuple(key) in v.plan.keys)
        # The reference runs the spec as written, so it also reads states the IR simplified away.
        read = _state_reads(checked, key)
        touched = [s for s in checked.state_names if s in kernel.tensors or s in read]
        # A kernel that decides a condition itself stores every output of its branches; the
        # reference writes back what this variant's branch assigns.
        assigned = next(v for v in plan.lowered.variants if v.key == tuple(key)).outputs
        writes = [t for t in kernel.plan.stores if t in assigned]
        variant_rows.append((key, kernel.kernel_name, touched, writes, None))
    variant_rows.sort(key=lambda row: [not b for b in row[0]])

    conditions = [host_printer.doprint(c) for c in plan.lowered.conditions]
    condition_inputs = _condition_inputs(checked, plan.lowered.conditions)

    reference_lines = _reference_body(checked, ref_printer)
    inplace_lines = None
    element_targets = {"param", *(s for s, kind in checked.state_kinds.items() if kind == ELEMENT)}
    if not plan.staged and set(checked.state_kinds.values()) <= {ELEMENT}:
        may_hold = alias_map(checked, element_targets)
        if may_hold is not None:
            inplace_lines = _reference_body(checked, ref_printer, InplaceAssignments(checked, ref_printer, element_targets, may_hold))
    reference_inputs = [n for n in _host_order(checked) if re.search(rf"\b{n}\b", "\n".join(reference_lines))]
    device_inputs = ["loss"] + [str(r.symbol) for r in plan.global_reductions]
    reference_device_inputs = [n for n in device_inputs if re.search(rf"\b{n}\b", "\n".join(reference_lines))]

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
            unset={name: none_flag(name) for name in hyper.unset_names},
            constraint=constraint,
            constraint_text=_constraint_text(constraint, [n for h in spec.hypers for n in h.unset_names]),
        ))

    states = []
    state_kinds = checked.state_kinds
    for state in spec.states:
        dtype = TORCH_DTYPES[state.dtype] if state.dtype else None
        if state.shape != ELEMENT:
            value = ref_printer.expr(state.init)
            if state_kinds[state.name] == HOST:  # kept on the CPU, as torch keeps `step`
                init = f"torch.tensor({value}, dtype=_scalar_dtype())"
                dtype = "_scalar_dtype()"
            else:
                # Rows and columns of a complex parameter are those of its real view.
                shape = {"row": "_row_shape(_real(param))", "col": "_col_shape(_real(param))", "scalar": "()"}[state.shape]
                init = f"torch.full({shape}, {value}, dtype=_real(param).dtype, device=param.device)"
            init_inputs = [n for n in checked.hyper_scalars if re.search(rf"\b{n}\b", init)]
            states.append(dict(name=state.name, init=init, inputs=init_inputs, dtype=dtype, host=dtype is not None))
            continue
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
        states.append(dict(name=state.name, init=init, inputs=init_inputs, dtype=dtype, host=False))

    engine = None  # the multi-tensor engine: elementwise specs only
    if not plan.staged:
        host_decided = [i for i in range(len(conditions)) if i not in plan.kernel_conditions]
        host_inputs = _condition_inputs(checked, [plan.lowered.conditions[i] for i in host_decided])
        engine = _engine_layout(checked, host_inputs, states, hypers)
        engine.update(_engine_variants(plan, checked, kernels, variant_rows, host_decided, conditions, ref_printer))

    triton_helpers = [TRITON_HELPERS[h] for h in sorted(triton_printer.helpers | scalar_printer.helpers)]
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
        state_kinds=[(s, checked.state_kinds[s]) for s in checked.state_names],
        counts_steps=checked.counts_steps,
        reads_machine_eps="machine_eps" in reference_inputs or any(
            "machine_eps" in {s.name for s in e.free_symbols}
            for e in [*plan.lowered.conditions, *(v for var in plan.lowered.variants for v in var.outputs.values())]),
        fresh_states=checked.fresh_states,
        kernels=kernels,
        variant_rows=variant_rows,
        conditions=conditions,
        condition_inputs=condition_inputs,
        reference_lines=reference_lines,
        inplace_lines=inplace_lines,
        inplace_inputs=[n for n in _host_order(checked) if inplace_lines and re.search(rf"\b{n}\b", "\n".join(inplace_lines))],
        reference_inputs=reference_inputs,
        reference_states=[s for s in checked.state_names if s not in checked.host_states],
        reference_device_inputs=reference_device_inputs,
        assigned=["param"] + [s for s in checked.state_names if any(s in row[3] for row in variant_rows)],
        staged=bool(plan.staged),
        uses_loss=checked.uses_loss,
        host_states=checked.host_states,
        **staged,
        multi_tensor=not plan.staged or staged["global_view"] is not None
        or any(v["multi"] for v in staged["staged_variants"]),
        multi_update=any(v["multi"] for v in staged["staged_variants"]),
        multi_host_states=any(v["multi"] and v["multi"].host_states_name for v in staged["staged_variants"]),
        multi_reduces=any(v["multi"] and v["multi"].reduces for v in staged["staged_variants"]),
        engine=engine,
        triton_helpers=triton_helpers,
        host_helpers=host_helpers,
    )
    return re.sub(r"\n{4,}", "\n\n\n", text)  # at most two blank lines, as PEP 8


# ---------------------------------------------------------------------------------------------
# Multi-tensor kernels (elementwise specs): one launch updates every tensor of a bucket through
# a table of addresses in device memory; host scalars are computed per program in float64.


def _table_columns(checked: CheckedSpec) -> list[str]:
    """Columns of the tensor table: the addresses of the tensors one row (one parameter) owns,
    then its number of elements, then its `fresh_*` flags."""
    columns = ["param", "grad", *checked.state_names]
    if checked.counts_steps:
        columns.append("step")
    return columns + ["master_param", "numel"] + [f"fresh_{s}" for s in checked.fresh_states]


def _engine_layout(checked: CheckedSpec, condition_inputs, states, hypers) -> dict:
    """What the launcher side of the multi-tensor engine needs: table columns, the order of the
    hyperparameter buffer (each scalar with where the param group holds it), and the
    hyperparameters the host itself reads. `condition_inputs`: what the conditions the host
    decides read."""
    columns = _table_columns(checked)
    sources = {}
    for hyper in hypers:
        if hyper["kind"] == "tuple":
            sources.update((c, f'group["{hyper["name"]}"][{i}]') for i, c in enumerate(hyper["components"]))
        else:
            sources[hyper["name"]] = f'group["{hyper["name"]}"]'
    assert list(sources) == list(checked.hyper_scalars)
    host_reads = [n for n in checked.hyper_scalars if n in condition_inputs or any(n in s["inputs"] for s in states)]
    return dict(
        sources=sources,
        flags=[n for n, kind in checked.hyper_scalars.items() if kind == "bool"],
        columns=columns,
        tensor_columns=columns[: columns.index("numel")],
        hypers=list(checked.hyper_scalars),
        host_reads=host_reads,
        condition_inputs=condition_inputs,
        variant_reads_step="step" in condition_inputs,
    )


def _condition_inputs(checked: CheckedSpec, conditions) -> list[str]:
    """The host names `conditions` read, in the order of the spec's host values."""
    order = _host_order(checked)
    return sorted({s.name for c in conditions for s in c.free_symbols},
                  key=lambda n: order.index(n) if n in order else 0)


def _engine_variants(plan: Plan, checked: CheckedSpec, kernels, variant_rows, host_decided, conditions,
                     ref_printer) -> dict:
    """How the engine picks a kernel when some conditions are decided in the kernels (they read
    the step): by the other conditions only, each kernel touching and writing what any of its
    branches does. Empty when the host decides every condition (the engine uses `_VARIANTS`)."""
    if not plan.kernel_conditions:
        return dict(kernel_conditions=[])
    rows: dict = {}
    for key, kernel_name, touched, _, _ in variant_rows:
        host_key = tuple(key[i] for i in host_decided)
        kernel = next(k for k in kernels if k.kernel_name == kernel_name)
        row = rows.setdefault(host_key, (kernel_name, set(), kernel.plan.stores))
        row[1].update(touched)
    return dict(
        kernel_conditions=[ref_printer.expr(checked.conditions[i]) for i in plan.kernel_conditions],
        host_conditions=[conditions[i] for i in host_decided],
        rows=[(key, name, [s for s in checked.state_names if s in touched], writes)
              for key, (name, touched, writes) in rows.items()],
    )


def _engine_kernel(kernel: KernelPlan, checked: CheckedSpec, printer: ScalarPrinter) -> dict:
    """The per-program prologue of a multi-tensor kernel: which hyperparameters it loads from the
    buffer (slot, flag or number), whether it reads `step`, its fresh flags, the host scalars
    printed as float64 Triton, and the scalars it then narrows to float32."""
    columns = _table_columns(checked)
    hypers = list(checked.hyper_scalars)
    host_syms = {str(sym) for sym, _ in kernel.host_defs}
    needed = set(kernel.host_inputs) | (set(kernel.scalar_args) - host_syms)
    flags = {n for n, kind in checked.hyper_scalars.items() if kind == "bool"} | {f"fresh_{s}" for s in checked.fresh_states}
    logic = (sympy.core.relational.Relational, sympy.logic.boolalg.BooleanFunction, sympy.logic.boolalg.BooleanAtom)
    booleans = flags | {str(sym) for sym, expr in kernel.host_defs if isinstance(expr, logic)}
    return dict(
        hyper_loads=[(n, hypers.index(n), n in flags) for n in hypers if n in needed],
        uses_step="step" in needed,
        step_column=columns.index("step") if "step" in columns else None,
        fresh_loads=[(n, columns.index(n)) for n in columns if n.startswith("fresh_") and n in needed],
        scalar_defs=[(str(sym), f"_condition({printer.doprint(expr)})" if str(sym) in booleans else printer.doprint(expr))
                     for sym, expr in kernel.host_defs],
        narrowed=[n for n in kernel.scalar_args if n not in booleans],
        columns=[(c, columns.index(c)) for c in columns if c in kernel.tensors],
        column_of={c: columns.index(c) for c in columns},
        numel_column=columns.index("numel"),
        master_column=columns.index("master_param"),
        row_width=len(columns),
        reads_param="param" in kernel.loads,
        writes_param="param" in kernel.stores,
    )


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
    return (list(checked.hyper_scalars) + ["step"] + [f"fresh_{s}" for s in checked.fresh_states]
            + list(checked.host_states) + list(TENSOR_VALUES))


def _constraint_text(constraint: str | None, unset_names) -> str | None:
    """The constraint as an error message shows it: `eps1 == none` rather than its flag."""
    if constraint is None:
        return None
    for name in unset_names:
        flag = none_flag(name)
        constraint = re.sub(rf"\bnot {flag}\b", f"{name} != none", constraint)
        constraint = re.sub(rf"\b{flag}\b", f"{name} == none", constraint)
    return constraint


def _default_literal(value) -> str:
    if value is None or isinstance(value, bool):
        return repr(value)
    if isinstance(value, tuple):
        return "(" + ", ".join(_default_literal(v) for v in value) + ")"
    if isinstance(value, int):
        return repr(value)
    return float_literal(value)


def _reference_body(checked: CheckedSpec, printer: ReferencePrinter, inplace: InplaceAssignments | None = None) -> list[str]:
    """The update as Python statements. Every element-kind name holds a tensor: a state or `param`
    assigned a host value, and a local that is a host value on one path of an `if` but a tensor on
    another, are broadcast with `torch.full_like(grad, ...)`. With `inplace`, assignments are
    printed by it instead (`_reference_inplace`, see optdsl/inplace.py)."""
    tensors = {"param", *checked.state_names}
    state_kinds = checked.state_kinds

    def emit(statements, depth, kinds) -> list[str]:
        indent = "    " * depth
        lines: list[str] = []
        for stmt in statements:
            if isinstance(stmt, ast.Assign) and inplace is not None:
                kinds[stmt.target] = ELEMENT if stmt.target in tensors else stmt.value.kind
                lines += inplace.assign(stmt, indent)
                continue
            if isinstance(stmt, ast.Assign):
                value = printer.expr(stmt.value)
                shape = state_kinds.get(stmt.target, ELEMENT)
                if stmt.target in tensors and stmt.value.kind == HOST and shape != HOST:
                    value = f"torch.full_like({'grad' if shape == ELEMENT else stmt.target}, {value})"
                elif stmt.target in tensors and shape == ELEMENT and stmt.value.kind != ELEMENT:
                    value = f"({value}).expand_as(grad)" if stmt.value.kind != HOST else value
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


# ---------------------------------------------------------------------------------------------
# Staged steps (reductions, row/column/scalar state, `loss`).

_PARTIAL_FINISH = {"sum": "sum", "max": "amax", "min": "amin"}
_BLOCK_REDUCE = {"sum": ("tl.sum", "0.0"), "max": ("tl.max", "float('-inf')"), "min": ("tl.min", "float('inf')")}


@dataclass
class StagedKernelView:
    name: str
    pointers: list[str]  # kernel parameters without the _ptr suffix, in order
    pointer_values: list[str]  # what the launcher passes for each
    scalar_args: list[str]
    loads: list[str]
    gathers: list[tuple[str, str]]
    uniforms: list[str]
    body: list[tuple[str, str]]
    writes: list[str]  # final lines: stores of outputs, or of block reductions
    partials: int
    temps: int
    uses_rows: bool
    uses_cols: bool
    row_uniforms: list[str] = field(default_factory=list)  # multi-tensor: one value per tensor, at `row`


def _pointer_dtype(tensor: str) -> str:
    return f"{tensor}_ptr.dtype.element_ty"


def _staged_kernel(block: KernelPlan, name: str, triton_printer, checked, state_pointer,
                   store_dtype=_pointer_dtype) -> StagedKernelView:
    per_element = {sympy.Symbol(t, real=True) for t in block.loads} | {sym for sym, _ in block.body}
    per_element |= {sympy.Symbol(g, real=True) for g, _ in block.gathers}
    body = [(str(sym), triton_printer.doprint(expr)) for sym, expr in block.body]
    pointers = list(dict.fromkeys(block.loads + block.stores)) + [g for g, _ in block.gathers] + list(block.uniforms)
    values = [state_pointer(p) for p in pointers]
    writes = []
    partials = temps = 0
    if block.reductions:
        pointers_extra = []
        count = sum(1 for r in block.reductions if r.over in ("tensor", "global"))
        for step in block.reductions:
            value = block.outputs[step.symbol.name]
            text = triton_printer.doprint(value)
            if step.over in ("tensor", "global"):
                reduce, neutral = _BLOCK_REDUCE[step.op]
                writes.append(f"tl.store(partials_ptr + pid * {count} + {partials}, "
                              f"{reduce}(tl.where(mask, {text}, {neutral}), axis=0))")
                partials += 1
            else:
                writes.append(f"tl.store(temps_ptr + {temps} * n_elements + offsets, {text}, mask=mask)")
                temps += 1
        if partials:
            pointers_extra.append(("partials", "partials"))
        if temps:
            pointers_extra.append(("temps", "temps"))
        pointers += [p for p, _ in pointers_extra]
        values += [v for _, v in pointers_extra]
    else:
        for tensor, value in block.outputs.items():
            text = triton_printer.doprint(value)
            if not value.free_symbols & per_element:  # one value per tensor, stored into every element
                text = f"{text} + tl.zeros((BLOCK_SIZE,), tl.float32)"
            writes.append(f"tl.store({tensor}_ptr + offsets, ({text}).to({store_dtype(tensor)}), mask=mask)")
    return StagedKernelView(
        name, pointers, values, list(block.scalar_args), list(block.loads), list(block.gathers), list(block.uniforms),
        body, writes, partials, temps,
        any(kind == "row" for _, kind in block.gathers), any(kind == "col" for _, kind in block.gathers),
    )


def _single_program_kernel(staged, name: str, triton_printer, state_pointer, uniform_states) -> StagedKernelView | None:
    """The whole step of a tensor that fits one program, as one kernel: every reduction is a block
    reduction of values the program holds, so the reduce passes, the update and the per-tensor
    states need no second launch. None when the step reduces per row or column or finishes a
    reduction in torch (those stay multi-pass)."""
    if any(kind != "kernel" for kind, _ in staged.passes) or any(s.over in ("row", "col") for s in staged.reductions):
        return None
    if any(state not in uniform_states for state in staged.device_outputs):
        return None
    blocks = [b for _, b in staged.passes] + [staged.final]
    if any(b.gathers for b in blocks):
        return None
    computed = {s.symbol.name for s in staged.reductions}
    loads = list(dict.fromkeys(t for b in blocks for t in b.loads))
    stores = list(staged.final.stores)
    new_values = {n: staged.torch_block.outputs[f"_new_{n}"] for n in staged.device_outputs}
    read_states = sorted({s.name for e in new_values.values() for s in e.free_symbols} & set(uniform_states))
    uniforms = list(dict.fromkeys([u for b in blocks for u in b.uniforms if u not in computed] + read_states))
    body = []
    for block in blocks[:-1]:
        body += [(str(sym), triton_printer.doprint(expr)) for sym, expr in block.body]
        for step in block.reductions:
            reduce, neutral = _BLOCK_REDUCE[step.op]
            text = triton_printer.doprint(block.outputs[step.symbol.name])
            body.append((str(step.symbol), f"{reduce}(tl.where(mask, {text}, {neutral}), axis=0)"))
    body += [(str(sym), triton_printer.doprint(expr)) for sym, expr in staged.final.body]
    per_element = {sympy.Symbol(t, real=True) for t in loads} | {sympy.Symbol(s, real=True) for s, _ in body}
    writes = []
    for tensor, value in staged.final.outputs.items():
        text = triton_printer.doprint(value)
        if not value.free_symbols & per_element:
            text = f"{text} + tl.zeros((BLOCK_SIZE,), tl.float32)"
        writes.append(f"tl.store({tensor}_ptr + offsets, ({text}).to({tensor}_ptr.dtype.element_ty), mask=mask)")
    for state, value in new_values.items():
        writes.append(f"tl.store({state}_ptr, ({triton_printer.doprint(value)}).to({state}_ptr.dtype.element_ty))")
    device = per_element | {sympy.Symbol(u, real=True) for u in uniforms} | {s.symbol for s in staged.reductions}
    scalars = [a for b in blocks for a in b.scalar_args]
    scalars += sorted({s.name for e in new_values.values() for s in e.free_symbols if s not in device}
                      - set(uniform_states))
    pointers = list(dict.fromkeys(loads + stores)) + uniforms
    pointers += [s for s in new_values if s not in pointers]
    return StagedKernelView(
        name, pointers, [state_pointer(p) for p in pointers], list(dict.fromkeys(scalars)), loads, [], uniforms,
        body, writes, 0, 0, False, False,
    )


@dataclass
class MultiTensorView:
    """A staged variant's step over every tensor of a bucket (the table layout of
    multi_tensor.py.j2; in a kernel, `row` is the program's tensor): its kernels, their table
    columns (then the number of elements), and its launcher: the host values it reads from the
    bucket's `h` (tensors with equal ones share a launch), its host scalars, the per-tensor states
    it reads as vectors (one value per tensor), and its lines. Plus the host scalar states
    (NAdam's `mu_product`), written per tensor."""

    kernels: list[StagedKernelView]
    columns: list[str]
    launcher_name: str
    host_inputs: list[str]
    host_defs: list[tuple[str, str]]
    device_inputs: list[str]  # the loss and global values the kernels read, from `inputs`
    state_vectors: list[str]
    lines: list[str]
    reduces: bool  # per tensor: a sharded tensor steps alone (its reductions all-reduce per tensor)
    host_states_name: str | None = None  # function (state, h): writes the host scalar states
    host_state_lines: list[str] = None

    @property
    def host_state_defs(self) -> list[tuple[str, str]]:
        """The host definitions the host state lines need, in order."""
        needed = _words(self.host_state_lines)
        kept = []
        for sym, value in reversed(self.host_defs):
            if sym in needed:
                kept.append((sym, value))
                needed |= _words([value])
        return kept[::-1]

    @property
    def host_state_inputs(self) -> list[str]:
        needed = _words(self.host_state_lines + [value for _, value in self.host_state_defs])
        return [name for name in self.host_inputs if name in needed]


def _words(texts) -> set[str]:
    return {word for text in texts for word in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", text)}


def _multi_tensor_kernel(block: KernelPlan, name: str, columns, per_tensor, triton_printer, checked) -> StagedKernelView:
    view = _staged_kernel(block, name, triton_printer, checked, lambda n: n,
                          store_dtype=lambda tensor: f"DTYPES[{columns.index(tensor)}]")
    view.row_uniforms = [u for u in view.uniforms if u in per_tensor]
    return view


def _multi_launch_line(view: StagedKernelView) -> str:
    pointers = view.uniforms + (["partials"] if view.partials else [])
    args = ", ".join(["tensors", "chunks", *pointers, *view.scalar_args])
    return f"{view.name}[grid]({args}, DTYPES=dtypes, ALIGNED=aligned, BLOCK_SIZE=BLOCK_SIZE)"


def _per_tensor_values(staged, uniform_states) -> set[str]:
    """The values a multi-tensor launch holds one of per tensor: reductions and per-tensor states."""
    return {str(s.symbol) for s in staged.reductions} | set(uniform_states)


def _multi_tensor_ready(staged, device_inputs, uniform_states) -> bool:
    """A staged variant that can step many tensors at once: its reductions are per tensor (finished
    per tensor from one partial per program), its device states one value per tensor, and its
    kernels read nothing per row or column. Row/column reductions and torch passes step alone."""
    blocks = [b for _, b in staged.passes] + [staged.final]
    per_tensor = _per_tensor_values(staged, uniform_states)
    return (all(kind == "kernel" for kind, _ in staged.passes)
            and all(s.over == "tensor" for s in staged.reductions)
            and set(staged.device_outputs) <= set(uniform_states)
            and not any(b.gathers for b in blocks)
            and all(set(b.uniforms) <= set(device_inputs) | per_tensor for b in blocks))


def _multi_tensor_view(staged, prefix: str, suffix: str, printers, checked, host_inputs, host_defs,
                       device_inputs, uniform_states) -> MultiTensorView:
    triton_printer, torch_printer = printers
    blocks = [b for _, b in staged.passes] + [staged.final]
    columns = list(dict.fromkeys(t for b in blocks for t in b.loads + b.stores))
    per_tensor = _per_tensor_values(staged, uniform_states)
    kernels, lines = [], []
    for level, (_, block) in enumerate(staged.passes, 1):
        view = _multi_tensor_kernel(block, f"{prefix}_multi_reduce{level}_kernel{suffix}", columns, per_tensor,
                                    triton_printer, checked)
        kernels.append(view)
        lines.append(f"partials = torch.empty((grid[0], {view.partials}), device=tensors.device, dtype=torch.float32)")
        lines.append(_multi_launch_line(view))
        targets = ", ".join(str(s.symbol) for s in block.reductions) + ("," if len(block.reductions) == 1 else "")
        lines.append(f"{targets} = _finish_tensors(partials, lengths, {_tuple_literal([s.op for s in block.reductions])})")
    final = _multi_tensor_kernel(staged.final, f"{prefix}_multi_kernel{suffix}", columns, per_tensor,
                                 triton_printer, checked)
    kernels.append(final)
    lines.append(_multi_launch_line(final))
    # All new per-tensor states are computed at one point here, so they share subexpressions (the
    # per-tensor path computes them where each is needed).
    shared, news = sympy.cse([staged.torch_block.outputs[f"_new_{name}"] for name in staged.device_outputs],
                             symbols=sympy.numbered_symbols("_shared", real=True))
    values = [(str(sym), torch_printer.doprint(expr)) for sym, expr in shared]
    lines += [f"{sym} = {value}" for sym, value in values]
    device = set(torch_printer.device)
    for sym, expr in shared:
        if expr.free_symbols & device:
            device.add(sym)
    torch_printer = type(torch_printer)(device)
    writes = {name: torch_printer.doprint(expr) for name, expr in zip(staged.device_outputs, news)}
    lines += [f'_write_per_tensor(states, "{name}", {value})' for name, value in writes.items()]
    used = _words([line for line in lines if not line.startswith("_write_per_tensor")] + list(writes.values()))
    return MultiTensorView(kernels, columns, f"{prefix}_multi_launch{suffix}", host_inputs, host_defs,
                           [d for d in device_inputs if d in used], [s for s in uniform_states if s in used],
                           lines, bool(staged.reductions))


def staged_views(plan: Plan, prefix: str, triton_printer, host_printer) -> dict:
    """Kernels and launcher lines of every staged variant, and of the global pass."""
    from .printers import TorchPrinter

    checked = plan.lowered.checked
    state_kinds = checked.state_kinds

    def state_pointer(name):
        if name in ("param", "grad"):
            return name
        if name in state_kinds and state_kinds[name] == ELEMENT:
            return f'state["{name}"]'
        return name  # a local of the launcher: row/col/scalar state, reduction, loss, global value

    def launcher_inputs(blocks, host_defs):
        defined = {str(sym) for sym, _ in host_defs}
        needed = set()
        for block in blocks:
            needed |= set(block.host_inputs) | (set(block.scalar_args) - defined)
        order = _host_order(checked)
        return sorted(needed, key=lambda n: (order.index(n) if n in order else len(order), n))

    views = []
    for staged in plan.staged:
        suffix = f"_{staged.suffix}" if staged.suffix else ""
        device = set(plan.lowered.symbol_kinds) | {r.symbol for r in staged.reductions} | \
            {r.symbol for r in plan.global_reductions}
        torch_printer = TorchPrinter(device)
        kernels, lines = [], []
        blocks = [b for kind, b in staged.passes if kind == "kernel"] + [staged.final, staged.torch_block]
        host_defs = [d for b in blocks for d in b.host_defs]
        level = 0
        for kind, item in staged.passes:
            if kind == "kernel":
                level += 1
                view = _staged_kernel(item, f"{prefix}_reduce{level}_kernel{suffix}", triton_printer, checked, state_pointer)
                kernels.append(view)
                if view.partials:
                    lines.append(f"partials = torch.empty((grid[0], {view.partials}), device=param.device, dtype=torch.float32)")
                if view.temps:
                    lines.append(f"temps = torch.empty(({view.temps}, n_elements), device=param.device, dtype=torch.float32)")
                lines += _launch_lines(view)
                # Per-tensor results finish together (one all-reduce per op for a sharded tensor).
                totals = [step for step in item.reductions if step.over == "tensor"]
                if totals:
                    targets = ", ".join(str(step.symbol) for step in totals) + ("," if len(totals) == 1 else "")
                    ops = _tuple_literal([step.op for step in totals])
                    lines.append(f"{'(' + targets + ')' if len(totals) == 1 else targets} = _finish(partials, {ops}, h)")
                segments = [step for step in item.reductions if step.over != "tensor"]
                if segments:
                    targets = ", ".join(str(step.symbol) for step in segments)
                    ops = _tuple_literal([step.op for step in segments])
                    overs = _tuple_literal([step.over for step in segments])
                    lines.append(f"{'(' + targets + ',)' if len(segments) == 1 else targets} = "
                                 f"_finish_segments(temps, {ops}, {overs}, param, h)")
            else:
                # torch reduces every dimension of a per-row, per-column or per-tensor value
                value = torch_printer.doprint(staged.torch_block.outputs[f"_reduce_{item.symbol}"])
                kind = item.arg_kind if item.arg_kind in (ROW, COL, ELEMENT) else UNIFORM
                lines.append(f'{item.symbol} = _reduce("{item.op}", {value}, h, "tensor", "{kind}")')
        final = _staged_kernel(staged.final, f"{prefix}_kernel{suffix}", triton_printer, checked, state_pointer)
        kernels.append(final)
        lines += _launch_lines(final)
        # Row, column and scalar states last: every kernel above read their old values.
        new_values = [(name, torch_printer.doprint(staged.torch_block.outputs[f"_new_{name}"])) for name in staged.device_outputs]
        lines += [f"new_{name} = {value}" for name, value in new_values]
        lines += [f'state["{name}"].copy_(new_{name})' for name, _ in new_values]
        uniform_states = [s for s in checked.state_names if state_kinds[s] == UNIFORM]
        single = _single_program_kernel(staged, f"{prefix}_single_kernel{suffix}", triton_printer, state_pointer,
                                        uniform_states) if staged.passes else None
        if single is not None:
            kernels.append(single)
            lines = ["if n_elements <= BLOCK_SIZE and not h[\"_shards\"]:",
                     "    # One program holds the whole tensor: reductions, update and per-tensor states in one launch.",
                     *(f"    {line}" for line in _launch_lines(single, "(1,)")),
                     "else:", *(f"    {line}" for line in lines)]
        host_state_lines = [f'state["{name}"].fill_({host_printer.doprint(staged.torch_block.outputs[f"_host_{name}"])})'
                            for name in staged.host_outputs]
        lines += host_state_lines
        device_states = [s for s in checked.state_names if state_kinds[s] in (ROW, COL, UNIFORM)]
        used = "\n".join(lines + [v for k in kernels for v in k.pointer_values])
        inputs = launcher_inputs(blocks, host_defs)
        printed_defs = [(str(sym), host_printer.doprint(expr)) for sym, expr in host_defs]
        multi = None
        device_inputs = ["loss", *(str(r.symbol) for r in plan.global_reductions)]
        if _multi_tensor_ready(staged, device_inputs, uniform_states):
            multi = _multi_tensor_view(staged, prefix, suffix, (triton_printer, torch_printer), checked, inputs,
                                       printed_defs, device_inputs, uniform_states)
            if host_state_lines:
                multi.host_states_name = f"{prefix}_host_states{suffix}"
                multi.host_state_lines = host_state_lines
        state_locals = [s for s in device_states if re.search(rf"\b{s}\b", used)]
        views.append(dict(
            staged=staged, launcher_name=f"{prefix}_launch{suffix}", kernels=kernels,
            host_inputs=inputs, host_defs=printed_defs, multi=multi,
            state_locals=state_locals,
            uses_loss=bool(re.search(r"\bloss\b", used)),
            globals=[str(r.symbol) for r in plan.global_reductions if re.search(rf"\b{r.symbol}\b", used)],
            lines=lines,
        ))
    global_view = None
    if plan.global_pass is not None:
        block = plan.global_pass
        if block.uniforms or block.gathers:
            raise AssertionError("a global reduction's argument is per element: the checker admits no other")
        host_defs = [(str(sym), host_printer.doprint(expr)) for sym, expr in block.host_defs]
        columns = list(dict.fromkeys(block.loads + block.stores))
        kernel = _multi_tensor_kernel(block, f"{prefix}_contributions_kernel", columns, (), triton_printer, checked)
        torch_printer = TorchPrinter(set(plan.lowered.symbol_kinds))
        reference = [(str(sym), torch_printer.doprint(expr)) for sym, expr in block.body]
        finishes = []
        for index, step in enumerate(block.reductions):
            finish = {"sum": "torch.sum", "max": "torch.amax", "min": "torch.amin"}[step.op]
            finishes.append((str(step.symbol), step.op, _PARTIAL_FINISH[step.op],
                             f"{finish}({torch_printer.doprint(block.outputs[step.symbol.name])})"))
        # Each contribution in float64: sums accumulate there, max and min are exact.
        if len({f for _, _, f, _ in finishes}) == 1:
            total = f"partials.{finishes[0][2]}(0{', dtype=torch.float64' if finishes[0][2] == 'sum' else ''})"
        else:
            total = "torch.stack([" + ", ".join(
                f"partials[:, {i}].{f}({'dtype=torch.float64' if f == 'sum' else ''})"
                for i, (_, _, f, _) in enumerate(finishes)) + "]).to(torch.float64)"
        lines = [f"partials = torch.empty((grid[0], {kernel.partials}), device=tensors.device, dtype=torch.float32)",
                 _multi_launch_line(kernel), f"return {total}"]
        inputs = launcher_inputs([block], block.host_defs)
        multi = MultiTensorView([kernel], columns, f"{prefix}_contributions_launch", inputs, host_defs, [], [], lines,
                                False)
        global_view = dict(multi=multi, host_inputs=inputs, host_defs=host_defs,
                           reference_body=reference, finishes=finishes)
    return dict(staged_variants=views, global_view=global_view)


def _launch_lines(view: StagedKernelView, grid: str = "grid") -> list[str]:
    args = ", ".join(view.pointer_values + view.scalar_args)
    return [f"{view.name}[{grid}]({args}, n_elements, n_cols, BLOCK_SIZE=BLOCK_SIZE)"]
