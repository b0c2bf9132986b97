"""IR stage: the checked spec lowered to SymPy, one straight-line program per kernel variant.

Each `if` condition is host-level, so it is decided once per tensor per step and selects a
kernel *variant*. For each combination of condition values the update body is lowered into the
new values of `param` and of every assigned state, as SymPy expressions over:

* element symbols: `param`, `grad` and the states' old values (one value per tensor element);
* host symbols: hyperparameters, `step`, and `fresh_<state>` flags.

SymPy's automatic evaluation only applies value-preserving rewrites (up to rounding): we never
call `simplify`, so `sqrt(v) + eps` and `sqrt(v + eps)` stay distinct.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import sympy
from sympy.codegen.cfunctions import log1p
from sympy.logic.boolalg import ITE

from . import ast
from .ast import COL, ELEMENT, HOST, ROW, UNIFORM, join_kinds
from .checker import REDUCTIONS, TENSOR_VALUES, CheckedSpec
from .errors import SpecError

MAX_CONDITIONS = 8


class sigmoid(sympy.Function):
    """1 / (1 + exp(-x)), kept as one function so it is printed with a stable implementation."""

    nargs = 1

    def _eval_is_real(self):
        return self.args[0].is_real


class Reduction(sympy.Function):
    """One reduction: `op` ("sum", "max" or "min") of its argument over `over` ("tensor", "row",
    "col" or "global": every parameter of the step). Other reductions (norm, mean, dot, ...) are
    written in terms of these."""

    nargs = 1
    op = ""
    over = ""

    def _eval_is_real(self):
        return True

    @property
    def kind(self) -> str:
        return {"tensor": UNIFORM, "global": UNIFORM, "row": ROW, "col": COL}[self.over]


REDUCTION_TYPES = {
    (op, over): type(f"{over}_{op}", (Reduction,), {"op": op, "over": over})
    for op in ("sum", "max", "min") for over in ("tensor", "row", "col", "global")
}


def kind_of(expr, symbol_kinds) -> str:
    """The kind of a lowered expression (HOST for anything built only from host symbols)."""
    if isinstance(expr, Reduction):
        return expr.kind
    if isinstance(expr, sympy.Symbol):
        return symbol_kinds.get(expr, HOST)
    return join_kinds(*(kind_of(a, symbol_kinds) for a in expr.args)) if expr.args else HOST


def element_symbol(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def host_symbol(name: str, is_flag: bool = False) -> sympy.Symbol:
    return sympy.Symbol(name) if is_flag else sympy.Symbol(name, real=True)


def number(value: float) -> sympy.Expr:
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    if value.is_integer() and abs(value) < 2**53:
        return sympy.Integer(int(value))
    if (2 * value).is_integer():
        return sympy.Rational(int(2 * value), 2)
    return sympy.Float(value)


_RELATIONS = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "==": sympy.Eq, "!=": sympy.Ne}


@dataclass
class Variant:
    """The update for one combination of `if` conditions."""

    key: tuple[bool, ...]
    outputs: dict[str, sympy.Expr]  # "param" and each assigned state -> new value
    local_names: list[tuple[str, sympy.Expr]]  # spec names bound along the way (for readable code)
    global_reductions: list = field(default_factory=list)  # Reduction nodes over every parameter

    @property
    def reads(self) -> list[str]:
        names = set()
        for expr in self.outputs.values():
            names |= {s.name for s in expr.free_symbols}
        return sorted(names)


@dataclass
class LoweredSpec:
    checked: CheckedSpec
    element_symbols: frozenset
    conditions: list[sympy.Basic]  # each `if` condition as a host expression
    variants: list[Variant] = field(default_factory=list)
    symbol_kinds: dict = field(default_factory=dict)  # every non-host symbol -> its kind
    global_values: dict = field(default_factory=dict)  # id(global reduction call) -> lowered value

    @property
    def device_symbols(self) -> frozenset:
        """Symbols whose values live on the device (never hoisted to the host)."""
        return frozenset(self.symbol_kinds)

    @property
    def staged(self) -> bool:
        """Whether the step runs on the staged runtime: it needs more than one elementwise kernel
        (a reduction, `loss`, or a row, column or per-tensor state) or reads a value of the tensor
        being updated (`numel`, `ndim`, ...), which only that runtime gathers."""
        kinds = {kind for symbol, kind in self.symbol_kinds.items() if symbol.name != "loss"}
        tensor_values = {host_symbol(name) for name in TENSOR_VALUES}
        reads_tensor_values = any(c.free_symbols & tensor_values for c in self.conditions) or any(
            e.free_symbols & tensor_values for v in self.variants for e in v.outputs.values())
        return bool(kinds - {ELEMENT}) or self.checked.uses_loss or bool(self.checked.host_states) or any(
            any(e.has(Reduction) for e in v.outputs.values()) for v in self.variants) or reads_tensor_values


class _Lowering:
    def __init__(self, checked: CheckedSpec):
        self.checked = checked
        self.cond_index = {id(c): i for i, c in enumerate(checked.conditions)}
        self.conditions: dict[int, sympy.Basic] = {}
        self.base_env: dict[str, sympy.Basic] = {}
        self.symbol_kinds: dict[sympy.Symbol, str] = {}
        for name, typ in checked.hyper_scalars.items():
            self.base_env[name] = host_symbol(name, typ == "bool")
        state_kinds = checked.state_kinds
        for name in ("param", "grad", *checked.state_names):
            kind = state_kinds.get(name, ELEMENT)
            if kind == HOST:
                self.base_env[name] = host_symbol(name)
            else:
                self.base_env[name] = element_symbol(name)
                self.symbol_kinds[self.base_env[name]] = kind
        self.base_env["step"] = host_symbol("step")
        for name in TENSOR_VALUES:
            self.base_env[name] = host_symbol(name)
        self.base_env["loss"] = element_symbol("loss")
        self.symbol_kinds[self.base_env["loss"]] = UNIFORM
        self.global_calls: dict[sympy.Basic, ast.Call] = {}  # lowered global reduction -> its call
        self.global_values: dict[int, sympy.Expr] = {}  # id(global call) -> its lowered value

    def lower_variant(self, key) -> Variant:
        env = dict(self.base_env)
        assigned: list[str] = []
        names: list[tuple[str, sympy.Expr]] = []
        self.block(self.checked.body, env, key, assigned, names)
        outputs = {name: env[name] for name in ["param"] + self.checked.state_names if name in assigned}
        found = {node for e in outputs.values() for node in sympy.preorder_traversal(e)
                 if isinstance(node, Reduction) and node.over == "global"}
        return Variant(tuple(key), outputs, names, sorted(found, key=sympy.default_sort_key))

    def block(self, statements, env, key, assigned, names):
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                value = self.expr(stmt.value, env)
                env[stmt.target] = value
                if stmt.target == "param" or stmt.target in self.checked.state_names:
                    if stmt.target not in assigned:
                        assigned.append(stmt.target)
                else:
                    names.append((stmt.target, value))
                continue
            taken = stmt.orelse
            for cond, body in stmt.branches:
                index = self.cond_index[id(cond)]
                lowered = self.expr(cond, env)
                previous = self.conditions.setdefault(index, lowered)
                if previous != lowered:
                    raise SpecError(
                        "this condition depends on a value that an earlier `if` sets differently; "
                        "compute it before the first `if`",
                        cond.pos,
                    )
                if key[index]:
                    taken = body
                    break
            self.block(taken, env, key, assigned, names)

    def expr(self, e: ast.Expr, env) -> sympy.Basic:
        if isinstance(e, ast.Number):
            return number(e.value)
        if isinstance(e, ast.Bool):
            return sympy.true if e.value else sympy.false
        if isinstance(e, ast.Name):
            if e.id == "inf":
                return sympy.oo
            if e.id == "pi":
                return sympy.Float(math.pi)
            return env[e.id]
        if isinstance(e, ast.Unary):
            operand = self.expr(e.operand, env)
            return {"-": lambda x: -x, "+": lambda x: x, "not": sympy.Not}[e.op](operand)
        if isinstance(e, ast.Binary):
            left, right = self.expr(e.left, env), self.expr(e.right, env)
            if e.op == "+":
                return left + right
            if e.op == "-":
                return left - right
            if e.op == "*":
                return left * right
            if e.op == "/":
                return left / right
            if e.op == "^":
                return sympy.Pow(left, right)
            if e.op == "and":
                return sympy.And(left, right)
            return sympy.Or(left, right)
        if isinstance(e, ast.Compare):
            operands = [self.expr(o, env) for o in e.operands]
            parts = [_RELATIONS[op](a, b) for op, a, b in zip(e.ops, operands, operands[1:])]
            return sympy.And(*parts)
        if isinstance(e, ast.Call):
            if e.func == "fresh":
                return host_symbol(f"fresh_{e.args[0].id}", is_flag=True)
            args = [self.expr(a, env) for a in e.args]
            if e.func in REDUCTIONS and not (e.func in ("max", "min") and len(args) == 2):
                return self.reduction(e, args)
            return _BUILTINS[e.func](*args)
        raise TypeError(f"cannot lower {e!r}")


    def reduction(self, e: ast.Call, args):
        base, result = REDUCTIONS[e.func]
        over = {UNIFORM: "tensor", ROW: "row", COL: "col", "global": "global"}[result]
        total, largest, smallest = (REDUCTION_TYPES[op, over] for op in ("sum", "max", "min"))
        x = args[0]
        # Values counted by mean/rms: those of the reduced argument along the reduced axis.
        reduced_kind = join_kinds(*(a.kind for a in e.args[:2]))
        count = {"row": self.base_env["cols"], "col": self.base_env["rows"]}.get(over) or {
            ELEMENT: self.base_env["numel"], ROW: self.base_env["rows"], COL: self.base_env["cols"]}[reduced_kind]
        if base == "cosine":
            eps = args[2] if len(args) == 3 else sympy.Float(1e-8)
            y = args[1]
            return total(x * y) / (sympy.Max(sympy.sqrt(total(x**2)), eps) * sympy.Max(sympy.sqrt(total(y**2)), eps))
        value = {
            "sum": lambda: total(x),
            "mean": lambda: total(x) / count,
            "max": lambda: largest(x),
            "min": lambda: smallest(x),
            "norm": lambda: sympy.sqrt(total(x**2)),
            "norm1": lambda: total(sympy.Abs(x)),
            "norm_inf": lambda: largest(sympy.Abs(x)),
            "rms": lambda: sympy.sqrt(total(x**2) / count),
            "dot": lambda: total(x * args[1]),
        }[base]()
        if over == "global":
            for node in sympy.preorder_traversal(value):
                if isinstance(node, Reduction) and node.over == "global":
                    if node.args[0].has(Reduction) or kind_of(node.args[0], self.symbol_kinds) != ELEMENT or \
                            node.args[0].has(self.base_env["loss"]):
                        raise SpecError(f"{e.func}()'s argument must be computed from per-element values and "
                                        "hyperparameters only (no other reduction, no `loss`, no row/column/scalar "
                                        "state)", e.pos)
                    self.global_calls.setdefault(node, e)
            self.global_values[id(e)] = value
        return value


def _clamp(x, lo, hi):
    return sympy.Min(sympy.Max(x, lo), hi)


def _atan2(y, x):
    # SymPy folds atan2(0, 0) to nan; torch (and the kernels) give 0.
    return sympy.Integer(0) if y.is_zero and x.is_zero else sympy.atan2(y, x)


def _where(cond, a, b):
    # A where() inside a condition (`where(g > 0, ..)` with `g = where(maximize, -grad, grad)`)
    # is lifted out here: SymPy would fold it with Piecewise.rewrite(ITE), which drops every branch
    # after one whose condition is a flag (it reads `maximize` as covering all reals).
    return sympy.Piecewise((a, _lift(cond)), (b, True))


def _lift(cond):
    """`cond` without Piecewise inside: ITE(c1, cond[P := a1], ITE(c2, ..., cond[P := an]))."""
    inner = next((node for node in sympy.preorder_traversal(cond) if isinstance(node, sympy.Piecewise)), None)
    if inner is None:
        return cond
    *branches, (last, _) = inner.args  # the last condition is True: every Piecewise is a where()
    out = _lift(cond.xreplace({inner: last}))
    for value, condition in reversed(branches):
        out = ITE(condition, _lift(cond.xreplace({inner: value})), out)
    return out


_BUILTINS = {
    "sqrt": sympy.sqrt,
    "rsqrt": lambda x: sympy.Pow(x, sympy.Rational(-1, 2)),
    "exp": sympy.exp,
    "log": sympy.log,
    "log1p": log1p,
    "abs": sympy.Abs,
    "sign": sympy.sign,
    "sigmoid": sigmoid,
    "tanh": sympy.tanh,
    "atan2": _atan2,
    "min": sympy.Min,
    "max": sympy.Max,
    "clamp": _clamp,
    "lerp": lambda a, b, w: a + w * (b - a),
    "where": _where,
}


def lower(checked: CheckedSpec) -> LoweredSpec:
    """Lower every variant of a checked spec to SymPy."""
    n = len(checked.conditions)
    if n > MAX_CONDITIONS:
        raise SpecError(
            f"too many `if` conditions ({n}; at most {MAX_CONDITIONS}): each doubles the kernel variants",
            checked.conditions[MAX_CONDITIONS].pos,
        ).located(checked.spec.path, checked.spec.source)
    lowering = _Lowering(checked)
    try:
        variants = [lowering.lower_variant(key) for key in itertools.product((True, False), repeat=n)]
        _check_global_calls(lowering.global_calls)
    except SpecError as exc:
        raise exc.located(checked.spec.path, checked.spec.source) from None
    element = frozenset(s for s, kind in lowering.symbol_kinds.items() if kind == ELEMENT)
    conditions = [lowering.conditions.get(i, sympy.false) for i in range(n)]
    return LoweredSpec(checked, element, conditions, variants, lowering.symbol_kinds, lowering.global_values)


def _check_global_calls(global_calls):
    """A global reduction is computed for every parameter before any update, so its argument must
    be the same whichever `if` branches a parameter's group takes."""
    by_call: dict = {}
    for node, call in global_calls.items():
        by_call.setdefault(id(call), (call, set()))[1].add(node)
    for call, nodes in by_call.values():
        if len(nodes) > 1:
            raise SpecError(f"{call.func}()'s argument depends on an `if` (it differs between kernel variants); "
                            "global reductions are computed before any `if` is taken", call.pos)
