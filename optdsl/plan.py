"""Plan stage: from each lowered variant to a kernel plan.

* Hoisting: every subexpression that depends only on host symbols (hyperparameters, `step`,
  `fresh_*` flags) is computed once per tensor per step on the host and passed to the kernel,
  so the kernel does only per-element work. Host factors of a sum or product are gathered into
  one scalar (`lr * weight_decay * param` becomes `c * param`), and `where(flag, -g, g)` becomes
  `g * c` with `c = where(flag, -1, 1)`.
* Naming: subexpressions equal to a value the spec bound to a name keep that name.
* CSE: remaining common subexpressions are computed once (`tmp0`, `tmp1`, ...).
Variants whose kernels come out identical share one kernel. In an elementwise spec, variants that
differ only in conditions on the step also share one: it decides those conditions per program
(the multi-tensor engine keeps the step on the device).
"""

from __future__ import annotations

import builtins
import keyword
from dataclasses import dataclass, field
from typing import Optional

import sympy

from .ast import COL, ELEMENT, HOST, ROW, UNIFORM
from .checker import TENSOR_VALUES
from .ir import LoweredSpec, Reduction, Variant, kind_of


@dataclass
class KernelPlan:
    suffix: str  # "" for a spec with one kernel, else e.g. "amsgrad"
    keys: list[tuple[bool, ...]]
    loads: list[str]  # tensors read: "param", "grad", state names
    stores: list[str]  # tensors written
    host_defs: list[tuple[sympy.Symbol, sympy.Expr]]  # computed on the host, in order
    host_inputs: list[str]  # host names the host code reads (hyperparameters, step, fresh_*)
    scalar_args: list[str]  # scalars the kernel takes
    body: list[tuple[sympy.Symbol, sympy.Expr]]  # per-element temporaries, in order
    outputs: dict[str, sympy.Expr]  # stored tensor -> value
    # Staged steps only: values read per row / per column (gathered), once per program (uniform).
    gathers: list[tuple[str, str]] = field(default_factory=list)  # (name, ROW or COL)
    uniforms: list[str] = field(default_factory=list)
    reductions: list = field(default_factory=list)  # a reduce kernel's ReductionStep per output

    @property
    def tensors(self) -> list[str]:
        return list(dict.fromkeys(self.loads + self.stores))


@dataclass
class ReductionStep:
    """One primitive reduction of a staged step: `op` of `arg` over `over`, bound to `symbol`."""

    symbol: sympy.Symbol
    op: str  # "sum", "max", "min"
    over: str  # "tensor", "row", "col", "global"
    arg: sympy.Expr
    arg_kind: str
    level: int = 0

    @property
    def kind(self) -> str:
        return {"row": ROW, "col": COL}.get(self.over, UNIFORM)

    @property
    def in_kernel(self) -> bool:
        """Reduced by a Triton kernel (the argument differs per element), else by torch."""
        return self.arg_kind == ELEMENT


@dataclass
class StagedPlan:
    """A step with reductions: reduce passes, then one elementwise kernel, then the row, column and
    scalar states (torch on small tensors) and the host scalar states."""

    suffix: str
    keys: list[tuple[bool, ...]]
    passes: list  # ("kernel", KernelPlan) or ("torch", ReductionStep), in order
    torch_block: KernelPlan  # host defs and values for the "torch" passes and device outputs
    final: KernelPlan
    device_outputs: dict[str, sympy.Expr]  # row/col/device scalar state -> new value (torch)
    host_outputs: dict[str, sympy.Expr]  # host scalar state -> new value
    reductions: list[ReductionStep] = field(default_factory=list)


@dataclass
class Plan:
    lowered: LoweredSpec
    kernels: list[KernelPlan] = field(default_factory=list)
    staged: list[StagedPlan] = field(default_factory=list)
    global_pass: Optional[KernelPlan] = None  # contributions of one tensor to every global reduction
    global_reductions: list[ReductionStep] = field(default_factory=list)
    global_values: dict = field(default_factory=dict)  # id(global call in the AST) -> its value
    # Indices of the conditions each kernel program decides itself (they read the device step);
    # the host decides the others and picks the kernel by them.
    kernel_conditions: list[int] = field(default_factory=list)

    def kernel_for(self, key) -> KernelPlan:
        return next(k for k in self.kernels if tuple(key) in k.keys)


class _Names:
    """Hands out unique, valid identifiers that shadow no Python builtin the kernels and launchers
    call (a spec may name a local `float` or `len`)."""

    def __init__(self, taken):
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name, n = base, 1
        while name in self.taken or keyword.iskeyword(name) or hasattr(builtins, name):
            n += 1
            name = f"{base}_{n}"
        self.taken.add(name)
        return name


def _is_host(expr, element) -> bool:
    return not (expr.free_symbols & element)


class _Hoister:
    def __init__(self, element):
        self.element = element
        self.defs: dict[sympy.Expr, sympy.Symbol] = {}
        self.values: dict[sympy.Symbol, sympy.Expr] = {}

    def scalar(self, expr):
        if expr.is_Atom:
            return expr
        # Merge with earlier hoisted scalars: c1 * c0 becomes one scalar defined from scratch.
        expr = expr.xreplace(self.values)
        if expr not in self.defs:
            symbol = sympy.Symbol(f"_hoisted{len(self.defs)}", real=True)
            self.defs[expr] = symbol
            self.values[symbol] = expr
        return self.defs[expr]

    def __call__(self, expr):
        if _is_host(expr, self.element):
            return self.scalar(expr)
        if expr.is_Add or expr.is_Mul:
            args = [a if _is_host(a, self.element) else self(a) for a in expr.args]
            rebuilt = expr.func(*args)
            if not (rebuilt.is_Add or rebuilt.is_Mul) or rebuilt.func != expr.func:
                return rebuilt
            host = [a for a in rebuilt.args if _is_host(a, self.element)]
            rest = [a for a in rebuilt.args if not _is_host(a, self.element)]
            if host:
                rest.insert(0, self.scalar(expr.func(*host)))
            return expr.func(*rest)
        if isinstance(expr, sympy.Piecewise):
            return self.piecewise(expr)
        if not expr.args:
            return expr
        return expr.func(*[self(a) for a in expr.args])

    def piecewise(self, expr):
        conditions = [c for _, c in expr.args]
        if all(_is_host(c, self.element) for c in conditions):
            # where(flag, -g, g) -> g * where(flag, -1, 1): one multiply instead of a select.
            split = [value.as_independent(*self.element, as_Add=False) for value, _ in expr.args]
            parts = {part for _, part in split}
            if len(parts) == 1:
                (part,) = parts
                coefficient = sympy.Piecewise(*[(c, cond) for (c, _), cond in zip(split, conditions)])
                return self.scalar(coefficient) * self(part)
        return sympy.Piecewise(*[(self(v), self(c) if not isinstance(c, sympy.logic.boolalg.BooleanAtom) else c)
                                 for v, c in expr.args])


def _toposort(defs):
    """Order (symbol, expr) definitions so each comes after what it uses; stable otherwise."""
    remaining = list(defs)
    defined = set()
    ordered = []
    symbols = {s for s, _ in defs}
    while remaining:
        for i, (sym, expr) in enumerate(remaining):
            if (expr.free_symbols & symbols) <= defined:
                ordered.append((sym, expr))
                defined.add(sym)
                del remaining[i]
                break
        else:  # pragma: no cover - cse never produces cycles
            raise RuntimeError("cyclic definitions")
    return ordered


def _extract_named(exprs: dict, candidates, names: _Names, rename: dict):
    """Pull subexpressions that equal a spec-named value out as named definitions."""
    defs = []
    for name, value in candidates:
        value = value.xreplace(rename)
        if value.is_Atom or value in rename:
            continue
        if not any(e.has(value) for e in exprs.values()) and not any(e.has(value) for _, e in defs):
            continue
        symbol = sympy.Symbol(names.fresh(name), real=True)
        rename[value] = symbol
        defs = [(s, e.xreplace({value: symbol})) for s, e in defs] + [(symbol, value)]
        for key in exprs:
            exprs[key] = exprs[key].xreplace({value: symbol})
    return defs


def _cse(defs, exprs: dict, names: _Names, prefix: str):
    """Common subexpressions across named definitions and outputs."""
    keys = list(exprs)
    all_exprs = [e for _, e in defs] + [exprs[k] for k in keys]
    generator = (sympy.Symbol(names.fresh(f"{prefix}{i}"), real=True) for i in range(10**6))
    replacements, reduced = sympy.cse(all_exprs, symbols=generator, optimizations=None, order="canonical")
    new_defs = list(replacements) + [(s, e) for (s, _), e in zip(defs, reduced[: len(defs)])]
    return _toposort(new_defs), dict(zip(keys, reduced[len(defs):]))


def _host_names(checked) -> set[str]:
    return (set(checked.hyper_scalars) | {"step"} | {f"fresh_{s}" for s in checked.fresh_states}
            | set(TENSOR_VALUES) | set(checked.host_states))


def plan_variant(lowered: LoweredSpec, variant: Variant) -> KernelPlan:
    checked = lowered.checked
    # `param_new` holds the new parameter in the multi-tensor kernels.
    names = _Names(set(["param", "param_new", "grad", *checked.state_names]) | _host_names(checked))
    return _plan_block(lowered, variant.key, variant.outputs, variant.local_names, names,
                       lowered.element_symbols, {})


def _plan_block(lowered: LoweredSpec, key, exprs: dict, local_names, names: "_Names", device, kinds) -> KernelPlan:
    """Hoist, name and CSE one block of values computed per element (or, for staged steps, per
    row, column or tensor); `device` holds every symbol whose value is not a host number."""
    element = frozenset(device)
    checked = lowered.checked
    tensor_names = ["param", "grad", *checked.state_names]
    hoist = _Hoister(element)
    outputs = {name: hoist(expr) for name, expr in exprs.items()}

    host_names = _host_names(checked)
    element_locals = [(n, hoist(v)) for n, v in local_names if not _is_host(v, element)]
    host_locals = [(n, v) for n, v in local_names if _is_host(v, element)]

    # Host side: hoisted scalars, named after the spec where the spec named them.
    hoisted = {sym: expr for expr, sym in hoist.defs.items()}
    used = set().union(*(e.free_symbols for e in outputs.values())) & set(hoisted)
    host_exprs = {sym: hoisted[sym] for sym in sorted(used, key=lambda s: int(s.name[len("_hoisted"):]))}
    renames, named = _name_hoisted(host_exprs, host_locals, names)
    host_exprs = {renames[s]: e for s, e in host_exprs.items()}
    outputs = {k: v.xreplace(renames) for k, v in outputs.items()}
    element_locals = [(n, v.xreplace(renames)) for n, v in element_locals]
    intermediate = _extract_named(host_exprs, [(n, v) for n, v in host_locals if n not in named], names, {})
    host_defs, host_exprs = _cse(intermediate, host_exprs, names, "h")
    host_defs = host_defs + list(host_exprs.items())

    # Kernel side.
    # A state's new value that later statements read is named `<state>_new`.
    state_values = [(f"{name}_new", value) for name, value in outputs.items() if name in tensor_names and name != "param"]
    body_defs = _extract_named(outputs, state_values + element_locals, names, {})
    body, outputs = _cse(body_defs, outputs, names, "tmp")

    kernel_symbols = set().union(*(e.free_symbols for e in outputs.values()), *(e.free_symbols for _, e in body))
    by_name = {s.name: s for s in kinds}
    loads = [t for t in tensor_names if sympy.Symbol(t, real=True) in kernel_symbols
             and kinds.get(by_name.get(t), ELEMENT) == ELEMENT]
    gathers = sorted((s.name, kinds[s]) for s in kernel_symbols if kinds.get(s) in (ROW, COL))
    uniforms = sorted(s.name for s in kernel_symbols if kinds.get(s) == UNIFORM)
    defined = ({s for s, _ in body} | {sympy.Symbol(t, real=True) for t in tensor_names}
               | {s for s in kernel_symbols if s in kinds})
    scalar_args = sorted({s.name for s in kernel_symbols - defined}, key=_arg_order(checked, host_defs))
    host_inputs = sorted(
        {s.name for _, e in host_defs for s in e.free_symbols} & host_names, key=_arg_order(checked, [])
    )
    return KernelPlan("", [key], loads, [o for o in outputs if o in tensor_names], host_defs, host_inputs,
                      scalar_args, body, outputs, gathers, uniforms)


def _name_hoisted(host_exprs, host_locals, names: _Names):
    """Rename hoisted scalars: the spec's name for the same value where there is one (each name
    used once), else c0, c1, ... Returns the renaming and the spec names used."""
    spec_names: dict = {}
    for name, value in host_locals:
        spec_names.setdefault(value, name)
    renames, used = {}, set()
    unnamed = 0
    for symbol, expr in host_exprs.items():
        label = spec_names.get(expr)
        if label is not None and label not in used:
            used.add(label)
            renames[symbol] = sympy.Symbol(names.fresh(label), real=True)
        else:
            renames[symbol] = sympy.Symbol(names.fresh(f"c{unnamed}"), real=True)
            unnamed += 1
    return renames, used


def _arg_order(checked, host_defs):
    order = list(checked.hyper_scalars) + ["step"] + [f"fresh_{s}" for s in checked.fresh_states]
    order += list(checked.host_states) + list(TENSOR_VALUES)
    order += [s.name for s, _ in host_defs]
    return lambda name: (order.index(name) if name in order else len(order), name)


def plan(lowered: LoweredSpec) -> Plan:
    if lowered.staged:
        return _plan_staged(lowered)
    result = Plan(lowered)
    result.kernel_conditions = [i for i, c in enumerate(lowered.conditions) if "step" in {s.name for s in c.free_symbols}]
    by_signature: dict = {}
    for variant, keys in _merge_step_conditions(lowered, result.kernel_conditions):
        kernel = plan_variant(lowered, variant)
        kernel.keys = keys
        signature = (tuple(kernel.loads), tuple(kernel.stores), tuple(kernel.host_defs), tuple(kernel.scalar_args),
                     tuple(kernel.body), tuple(kernel.outputs.items()))
        if signature in by_signature:
            by_signature[signature].keys.extend(keys)
        else:
            by_signature[signature] = kernel
            result.kernels.append(kernel)
    _name_kernels(result)
    return result


def _merge_step_conditions(lowered: LoweredSpec, kernel_conditions: list[int]):
    """(variant, keys it stands for) per kernel to plan. Variants that differ only in conditions
    on the step merge into one whose outputs select between their values with those conditions
    (a Piecewise, as a where() with host conditions): each program decides them from its tensor's
    step, which lives on the device, so the host picks the kernel without reading it. An output
    one of them leaves unassigned keeps its old value there."""
    if not kernel_conditions:
        return [(variant, [variant.key]) for variant in lowered.variants]
    labels = [_condition_label(c) for c in lowered.checked.conditions]
    groups: dict = {}
    for variant in lowered.variants:
        host_key = tuple(b for i, b in enumerate(variant.key) if i not in kernel_conditions)
        groups.setdefault(host_key, []).append(variant)
    conditions = [lowered.conditions[i] for i in kernel_conditions]
    merged = []
    for variants in groups.values():
        names = list(dict.fromkeys(n for v in variants for n in v.outputs))
        outputs = {}
        for name in names:
            values = {tuple(v.key[i] for i in kernel_conditions): v.outputs.get(name, sympy.Symbol(name, real=True))
                      for v in variants}
            outputs[name] = _select(values, conditions)
        # The conditions keep the spec's wording as names (`rho_t_gt_5`), then each branch's locals.
        local_names = [(labels[i], lowered.conditions[i]) for i in kernel_conditions]
        local_names += list(dict.fromkeys(pair for v in variants for pair in v.local_names))
        found = sorted({n for v in variants for n in v.global_reductions}, key=sympy.default_sort_key)
        merged.append((Variant(variants[0].key, outputs, local_names, found), [v.key for v in variants]))
    return merged


def _select(values: dict, conditions: list) -> sympy.Expr:
    """The value for each combination of `conditions` (a key of booleans -> value) as one
    expression: a Piecewise that tests the conditions in order, skipping a condition whose
    branches agree (an `elif` after a taken `if`)."""
    if not conditions:
        return values[()]
    taken = _select({key[1:]: v for key, v in values.items() if key[0]}, conditions[1:])
    other = _select({key[1:]: v for key, v in values.items() if not key[0]}, conditions[1:])
    if taken == other:
        return taken
    rest = other.args if isinstance(other, sympy.Piecewise) else ((other, True),)
    # Unevaluated: SymPy would rewrite the conditions (`rho_t > 5` as `... < -6`), which then no
    # longer match the names the spec gives them.
    return sympy.Piecewise((taken, conditions[0]), *rest, evaluate=False)


def _name_kernels(result: Plan) -> None:
    """Name each kernel by the conditions that distinguish it (`amsgrad`, `not_nesterov`, ...)."""
    if len(result.kernels) == 1:
        return
    checked = result.lowered.checked
    labels = [_condition_label(c) for c in checked.conditions]
    n = len(labels)
    taken = set()
    for kernel in result.kernels:
        parts = []
        for i in range(n):
            values = {key[i] for key in kernel.keys}
            if len(values) == 1:
                # Only mention a condition if some other kernel differs in it.
                if any(any(k[i] != key[i] for key in kernel.keys for k in other.keys)
                       for other in result.kernels if other is not kernel):
                    parts.append(labels[i] if values.pop() else f"not_{labels[i]}")
        suffix = "_".join(parts) or "default"
        base, m = suffix, 1
        while suffix in taken:
            m += 1
            suffix = f"{base}_{m}"
        taken.add(suffix)
        kernel.suffix = suffix


_OP_WORDS = {"<": "lt", "<=": "le", ">": "gt", ">=": "ge", "==": "eq", "!=": "ne"}


def _condition_label(cond) -> str:
    from . import ast

    def word(e):
        if isinstance(e, ast.Name):
            return e.id
        if isinstance(e, ast.Number):
            return e.text.replace(".", "p").replace("-", "m").replace("+", "")
        if isinstance(e, ast.Call) and e.func == "fresh":
            return f"fresh_{e.args[0].id}"
        if isinstance(e, ast.Compare):
            out = word(e.operands[0])
            for op, operand in zip(e.ops, e.operands[1:]):
                out += f"_{_OP_WORDS[op]}_{word(operand)}"
            return out
        if isinstance(e, ast.Unary) and e.op == "not":
            return f"not_{word(e.operand)}"
        if isinstance(e, ast.Binary) and e.op in ("and", "or"):
            return f"{word(e.left)}_{e.op}_{word(e.right)}"
        return "cond"

    return word(cond)


# ---------------------------------------------------------------------------------------------
# Staged steps: reductions, row/column/scalar state, `loss`.


def _reduction_name(node) -> str:
    return node.op if node.over == "tensor" else f"{node.over}_{node.op}"


def _plan_staged(lowered: LoweredSpec) -> Plan:
    checked = lowered.checked
    result = Plan(lowered)
    base_names = (set(["param", "grad", *checked.state_names]) | _host_names(checked) | {"loss"}
                  | {"pid", "row_index", "col_index", "n_rows", "n_cols", "partials", "temps", "inputs", "grid", "state"})

    # Global reductions: one pass over every parameter before any update, shared by all variants.
    nodes = sorted({n for v in lowered.variants for n in v.global_reductions}, key=sympy.default_sort_key)
    global_names = _Names(base_names)
    global_symbols = {n: sympy.Symbol(global_names.fresh(_reduction_name(n)), real=True) for n in nodes}
    kinds = dict(lowered.symbol_kinds)
    for node, symbol in global_symbols.items():
        result.global_reductions.append(ReductionStep(symbol, node.op, "global", node.args[0], ELEMENT, 1))
        kinds[symbol] = UNIFORM
    if nodes:
        block = _plan_block(lowered, (), {s.name: n.args[0] for n, s in global_symbols.items()}, [],
                            _Names(base_names | {s.name for s in global_symbols.values()}), set(kinds), kinds)
        block.reductions = list(result.global_reductions)
        result.global_pass = block
    result.global_values = {key: value.xreplace(global_symbols) for key, value in lowered.global_values.items()}

    by_signature: dict = {}
    for variant in lowered.variants:
        staged = _plan_staged_variant(lowered, variant, global_symbols, kinds, base_names)
        signature = repr((staged.passes, staged.final, staged.device_outputs, staged.host_outputs, staged.torch_block))
        if signature in by_signature:
            by_signature[signature].keys.append(variant.key)
        else:
            by_signature[signature] = staged
            result.staged.append(staged)
    result.kernels = [s.final for s in result.staged]
    for staged, kernel in zip(result.staged, result.kernels):
        kernel.keys = staged.keys
    _name_kernels(result)
    for staged in result.staged:
        staged.suffix = staged.final.suffix
    return result


def _plan_staged_variant(lowered, variant, global_symbols, global_kinds, base_names) -> StagedPlan:
    checked = lowered.checked
    kinds = dict(global_kinds)
    names = _Names(base_names | {s.name for s in global_symbols.values()})
    outputs = {k: v.xreplace(global_symbols) for k, v in variant.outputs.items()}
    local_names = [(n, v.xreplace(global_symbols)) for n, v in variant.local_names]

    # Innermost reductions first, so each one's argument refers to earlier ones by symbol.
    steps: list[ReductionStep] = []
    replaced: dict = {}
    while True:
        found = [node for e in [*outputs.values(), *(v for _, v in local_names)]
                 for node in sympy.preorder_traversal(e)
                 if isinstance(node, Reduction) and not node.args[0].has(Reduction)]
        if not found:
            break
        for node in sorted(set(found), key=sympy.default_sort_key):  # not traversal order: it varies with hashing
            symbol = sympy.Symbol(names.fresh(_reduction_name(node)), real=True)
            step = ReductionStep(symbol, node.op, node.over, node.args[0], kind_of(node.args[0], kinds))
            depends = [s.level for s in steps if s.symbol in node.args[0].free_symbols]
            step.level = max(depends, default=0) + (1 if step.in_kernel else 0)
            kinds[symbol] = step.kind
            replaced[node] = symbol
            steps.append(step)
        outputs = {k: v.xreplace(replaced) for k, v in outputs.items()}
        local_names = [(n, v.xreplace(replaced)) for n, v in local_names]

    device = set(kinds)
    passes = []
    for level in range(max((s.level for s in steps), default=0) + 1):
        in_kernel = [s for s in steps if s.in_kernel and s.level == level]
        if in_kernel:
            block = _plan_block(lowered, variant.key, {s.symbol.name: s.arg for s in in_kernel}, local_names,
                                names, device, kinds)
            block.reductions = in_kernel
            passes.append(("kernel", block))
        passes += [("torch", s) for s in steps if not s.in_kernel and s.level == level]

    state_kinds = checked.state_kinds
    element_outputs = {k: v for k, v in outputs.items() if k == "param" or state_kinds[k] == ELEMENT}
    device_outputs = {k: v for k, v in outputs.items() if k != "param" and state_kinds[k] in (ROW, COL, UNIFORM)}
    host_outputs = {k: v for k, v in outputs.items() if k != "param" and state_kinds[k] == HOST}
    final = _plan_block(lowered, variant.key, element_outputs, local_names, names, device, kinds)
    passes = _drop_unread_torch_passes(passes, final, [*device_outputs.values(), *host_outputs.values()])
    steps = [s for s in steps if s.in_kernel or ("torch", s) in passes]
    torch_values = {f"_reduce_{s.symbol.name}": s.arg for kind, s in passes if kind == "torch"}
    torch_values.update({f"_new_{k}": v for k, v in device_outputs.items()})
    torch_values.update({f"_host_{k}": v for k, v in host_outputs.items()})
    # Hoisted only, no CSE: these values are computed at different points of the step.
    hoist = _Hoister(device)
    torch_outputs = {k: hoist(v) for k, v in torch_values.items()}
    renames = {sym: sympy.Symbol(names.fresh(f"c{i}"), real=True) for i, sym in enumerate(hoist.values)}
    torch_defs = [(renames[sym], expr.xreplace(renames)) for sym, expr in hoist.values.items()]
    torch_outputs = {k: v.xreplace(renames) for k, v in torch_outputs.items()}
    used = set().union(*(e.free_symbols for _, e in torch_defs), *(e.free_symbols for e in torch_outputs.values()))
    host_inputs = sorted({s.name for s in used} & _host_names(checked), key=_arg_order(checked, []))
    torch_block = KernelPlan("", [variant.key], [], [], torch_defs, host_inputs, [], [], torch_outputs)
    _share_host_defs([b for kind, b in passes if kind == "kernel"] + [final, torch_block])
    return StagedPlan("", [variant.key], passes, torch_block, final, device_outputs, host_outputs, steps)


def _drop_unread_torch_passes(passes, final, state_values) -> list:
    """`passes` without the torch reductions nothing reads: simplifying the update can leave one
    behind (AdamP's maximize branch of a cosine, once `where(maximize, -g, g)` became a host factor)."""
    while True:
        read = set(final.uniforms) | {g for g, _ in final.gathers}
        read |= {s.name for value in state_values for s in value.free_symbols}
        for kind, item in passes:
            if kind == "kernel":
                read |= set(item.uniforms) | {g for g, _ in item.gathers}
            else:
                read |= {s.name for s in item.arg.free_symbols}
        kept = [(kind, item) for kind, item in passes if kind == "kernel" or item.symbol.name in read]
        if len(kept) == len(passes):
            return passes
        passes = kept


def _share_host_defs(blocks) -> None:
    """One launcher computes the host scalars of all its blocks: a scalar an earlier block already
    defines (the same expression) is reused instead of computed again."""
    known: dict = {}  # expression -> symbol that holds it
    alias: dict = {}
    for block in blocks:
        kept = []
        for symbol, expr in block.host_defs:
            expr = expr.xreplace(alias)
            if expr in known:
                alias[symbol] = known[expr]
            else:
                known[expr] = symbol
                kept.append((symbol, expr))
        block.host_defs = kept
        block.body = [(sym, e.xreplace(alias)) for sym, e in block.body]
        block.outputs = {k: v.xreplace(alias) for k, v in block.outputs.items()}
        names = {s.name: a.name for s, a in alias.items()}
        block.scalar_args = list(dict.fromkeys(names.get(a, a) for a in block.scalar_args))
