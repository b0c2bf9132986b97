"""Plan stage: from each lowered variant to a kernel plan.

* Hoisting: every subexpression that depends only on host symbols (hyperparameters, `step`,
  `fresh_*` flags) is computed once per tensor per step on the host and passed to the kernel,
  so the kernel does only per-element work. Host factors of a sum or product are gathered into
  one scalar (`lr * weight_decay * param` becomes `c * param`), and `where(flag, -g, g)` becomes
  `g * c` with `c = where(flag, -1, 1)`.
* Naming: subexpressions equal to a value the spec bound to a name keep that name.
* CSE: remaining common subexpressions are computed once (`tmp0`, `tmp1`, ...).
Variants whose kernels come out identical share one kernel.
"""

from __future__ import annotations

import builtins
import keyword
from dataclasses import dataclass, field

import sympy

from .ir import LoweredSpec, Variant


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

    @property
    def tensors(self) -> list[str]:
        return list(dict.fromkeys(self.loads + self.stores))


@dataclass
class Plan:
    lowered: LoweredSpec
    kernels: list[KernelPlan] = field(default_factory=list)

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


def plan_variant(lowered: LoweredSpec, variant: Variant) -> KernelPlan:
    element = lowered.element_symbols
    checked = lowered.checked
    tensor_names = ["param", "grad", *checked.state_names]
    hoist = _Hoister(element)
    outputs = {name: hoist(expr) for name, expr in variant.outputs.items()}

    host_names = set(checked.hyper_scalars) | {"step"} | {f"fresh_{s}" for s in checked.fresh_states}
    names = _Names(set(tensor_names) | host_names)
    element_locals = [(n, hoist(v)) for n, v in variant.local_names if not _is_host(v, element)]
    host_locals = [(n, v) for n, v in variant.local_names if _is_host(v, element)]

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
    state_values = [(f"{name}_new", value) for name, value in outputs.items() if name != "param"]
    body_defs = _extract_named(outputs, state_values + element_locals, names, {})
    body, outputs = _cse(body_defs, outputs, names, "tmp")

    kernel_symbols = set().union(*(e.free_symbols for e in outputs.values()), *(e.free_symbols for _, e in body))
    loads = [t for t in tensor_names if sympy.Symbol(t, real=True) in kernel_symbols]
    defined = {s for s, _ in body} | {sympy.Symbol(t, real=True) for t in tensor_names}
    scalar_args = sorted({s.name for s in kernel_symbols - defined}, key=_arg_order(checked, host_defs))
    host_inputs = sorted(
        {s.name for _, e in host_defs for s in e.free_symbols} & host_names, key=_arg_order(checked, [])
    )
    return KernelPlan("", [variant.key], loads, list(outputs), host_defs, host_inputs, scalar_args, body, outputs)


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
    order += [s.name for s, _ in host_defs]
    return lambda name: (order.index(name) if name in order else len(order), name)


def plan(lowered: LoweredSpec) -> Plan:
    result = Plan(lowered)
    by_signature: dict = {}
    for variant in lowered.variants:
        kernel = plan_variant(lowered, variant)
        signature = (tuple(kernel.loads), tuple(kernel.stores), tuple(kernel.host_defs), tuple(kernel.scalar_args),
                     tuple(kernel.body), tuple(kernel.outputs.items()))
        if signature in by_signature:
            by_signature[signature].keys.append(variant.key)
        else:
            by_signature[signature] = kernel
            result.kernels.append(kernel)
    _name_kernels(result)
    return result


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
