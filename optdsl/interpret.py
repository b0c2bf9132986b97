"""Plain fp64 interpretations, independent of code generation, used to check the compiler:

* `interpret_step` walks the checked AST (user functions inlined, nothing simplified) with torch
  float64 ops, treating every value — host or element — as a tensor. Reductions are computed
  from their definitions on the parameter viewed as a (rows, cols) matrix; global reductions from
  every parameter's contribution (`interpret_globals`).
* `evaluate_plan` runs a planned kernel variant (hoisted host scalars, CSE temporaries, outputs)
  by walking the SymPy IR with torch float64 ops.

Comparing the two on random inputs checks lowering, simplification, hoisting and CSE together.
"""

from __future__ import annotations

import math

import sympy
import torch
from sympy.codegen.cfunctions import log1p

from . import ast
from .ast import HOST
from .checker import REDUCTIONS, CheckedSpec
from .ir import sigmoid
from .plan import KernelPlan, Plan

F64 = torch.float64


def _t(value):
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(value) if isinstance(value, bool) else torch.tensor(value, dtype=F64)


_AST_FUNCTIONS = {
    "sqrt": torch.sqrt, "rsqrt": torch.rsqrt, "exp": torch.exp, "log": torch.log, "log1p": torch.log1p,
    "abs": torch.abs, "sign": torch.sign, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
    "atan2": torch.atan2, "min": torch.minimum, "max": torch.maximum,
    "clamp": lambda x, lo, hi: torch.minimum(torch.maximum(x, lo), hi),
    "lerp": lambda a, b, w: a + w * (b - a),
    "where": torch.where,
}
_COMPARE = {"<": torch.lt, "<=": torch.le, ">": torch.gt, ">=": torch.ge, "==": torch.eq, "!=": torch.ne}


def _segments(x, shape, over):
    """x broadcast to the parameter's shape, as a matrix whose rows are the segments reduced:
    one row for the whole tensor, the parameter's rows, or its columns."""
    rows, cols = (shape[0], math.prod(shape[1:])) if len(shape) else (1, 1)
    matrix = x.expand(shape).reshape(rows, cols)
    if over in ("tensor", "global"):
        return matrix.reshape(1, -1)
    return matrix if over == "row" else matrix.t()


def _reduce(base, args, over, shape):
    """`base` (sum, mean, norm, ..., cosine) of each segment of the arguments."""
    x = _segments(args[0], shape, over)
    count = x.shape[1]

    def total(v):
        return v.sum(dim=1)

    def extreme(v, largest):
        if count == 0:
            return torch.full((v.shape[0],), -math.inf if largest else math.inf, dtype=F64)
        return v.amax(dim=1) if largest else v.amin(dim=1)

    if base in ("dot", "cosine"):
        y = _segments(args[1], shape, over)
        dot = total(x * y)
        if base == "dot":
            value = dot
        else:
            eps = args[2] if len(args) > 2 else _t(1e-8)
            value = dot / (torch.maximum(total(x * x).sqrt(), eps) * torch.maximum(total(y * y).sqrt(), eps))
    else:
        value = {
            "sum": lambda: total(x), "mean": lambda: total(x) / count, "max": lambda: extreme(x, True),
            "min": lambda: extreme(x, False), "norm": lambda: total(x * x).sqrt(), "norm1": lambda: total(x.abs()),
            "norm_inf": lambda: extreme(x.abs(), True), "rms": lambda: (total(x * x) / count).sqrt(),
        }[base]()
    if over in ("tensor", "global"):
        return value.reshape(())
    if over == "row":
        return value.reshape((shape[0] if len(shape) else 1,) + (1,) * max(len(shape) - 1, 0))
    return value.reshape((1,) + tuple(shape[1:]) if len(shape) else ())


# global reduction -> (this tensor's contribution, how contributions combine)
_GLOBAL_PARTS = {
    "sum": (lambda x: x.sum(), lambda parts: torch.stack(parts).sum()),
    "norm": (lambda x: (x * x).sum(), lambda parts: torch.stack(parts).sum().sqrt()),
    "max": (lambda x: x.amax() if x.numel() else _t(-math.inf), lambda parts: torch.stack(parts).amax()),
}


def _reduction(e: ast.Call, env):
    base, kind = REDUCTIONS[e.func]
    args = [_eval(a, env) for a in e.args]
    shape = env["param"].shape
    if kind != "global":
        return _reduce(base, args, {"row": "row", "col": "col"}.get(kind, "tensor"), shape)
    if id(e) in env.get("__globals__", {}):
        return env["__globals__"][id(e)]
    if "__collect__" not in env:
        raise KeyError(f"{e.func}(): interpret_globals() first")
    env["__collect__"].setdefault(id(e), (base, []))[1].append(_GLOBAL_PARTS[base][0](args[0].expand(shape)))
    return _t(0.0)  # a placeholder: this pass only collects contributions


def _eval(e: ast.Expr, env):
    if isinstance(e, ast.Number):
        return _t(e.value)
    if isinstance(e, ast.Bool):
        return torch.tensor(e.value)
    if isinstance(e, ast.Name):
        if e.id == "inf":
            return _t(math.inf)
        if e.id == "pi":
            return _t(math.pi)
        return _t(env[e.id])
    if isinstance(e, ast.Unary):
        value = _eval(e.operand, env)
        return {"-": torch.neg, "+": lambda x: x, "not": torch.logical_not}[e.op](value)
    if isinstance(e, ast.Binary):
        a, b = _eval(e.left, env), _eval(e.right, env)
        return {
            "+": torch.add, "-": torch.sub, "*": torch.mul, "/": torch.div, "^": torch.pow,
            "and": torch.logical_and, "or": torch.logical_or,
        }[e.op](a, b)
    if isinstance(e, ast.Compare):
        values = [_eval(o, env) for o in e.operands]
        result = torch.tensor(True)
        for op, a, b in zip(e.ops, values, values[1:]):
            result = torch.logical_and(result, _COMPARE[op](a, b))
        return result
    if isinstance(e, ast.Call):
        if e.func == "fresh":
            return torch.tensor(bool(env[f"fresh_{e.args[0].id}"]))
        if e.func in REDUCTIONS and not (e.func in ("max", "min") and len(e.args) == 2):
            return _reduction(e, env)
        return _AST_FUNCTIONS[e.func](*[_eval(a, env) for a in e.args])
    raise TypeError(f"cannot interpret {e!r}")


def tensor_values(param) -> dict:
    """`numel`, `ndim`, `rows`, `cols` and `machine_eps` of a parameter (its real view)."""
    real = torch.view_as_real(param) if param.is_complex() else param
    rows = real.shape[0] if real.dim() else 1
    return {"numel": float(real.numel()), "ndim": float(real.dim()), "rows": float(rows),
            "cols": float(real.numel() // rows if rows else 0), "machine_eps": torch.finfo(real.dtype).eps}


def interpret_globals(checked: CheckedSpec, items) -> dict:
    """Every global reduction of one step over `items`, (param, grad, state, h) per parameter."""
    collected: dict = {}
    for param, grad, state, h in items:
        # A global reduction's argument reads no loss and no other reduction: placeholders do.
        interpret_step(checked, param, grad, state, h, {"__collect__": collected, "loss": _t(0.0)})
    return {key: _GLOBAL_PARTS[base][1](parts) for key, (base, parts) in collected.items()}


def interpret_step(checked: CheckedSpec, param, grad, state: dict, h: dict, inputs: dict | None = None) -> dict:
    """One step of the spec as written. Returns the new values of param and of assigned states.

    `inputs`: the step's `loss`, and `__globals__` from interpret_globals for rules with global
    reductions."""
    env = dict(tensor_values(param), **h)
    env.update(inputs or {})
    env.update(param=param.to(F64), grad=grad.to(F64))
    env.update({name: value.to(F64) for name, value in state.items()})
    assigned = {"param"}

    def run(statements):
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                env[stmt.target] = _eval(stmt.value, env)
                if stmt.target in checked.state_names:
                    assigned.add(stmt.target)
                continue
            for cond, body in stmt.branches:
                if bool(_eval(cond, env)):
                    run(body)
                    break
            else:
                run(stmt.orelse)

    original = dict(state, param=env["param"])
    run(checked.body)
    if param.numel() == 0:
        # Nothing to update (the runtime returns early); per-tensor host scalars (NaDam's
        # mu_product) still advance, as torch's do.
        kinds = checked.state_kinds
        for name in assigned:
            if name == "param" or kinds[name] != HOST:
                env[name] = original[name] if name in original else env[name]
    # Copies: a result may be an input itself (`m = param`), which the caller may then update in place.
    return {name: _t(env[name]).expand(state[name].shape if name in state else param.shape).clone()
            for name in assigned}


# --- SymPy IR ---------------------------------------------------------------------------------

def _ir_eval(expr, env):
    if expr.is_Symbol:
        return _t(env[expr.name])
    if expr.is_Number or expr.is_NumberSymbol:  # NumberSymbol: pi, E (SymPy folds atan2(1, 1) to pi/4)
        return _t(float(expr))
    if expr in (sympy.true, sympy.false):
        return torch.tensor(bool(expr))
    args = [_ir_eval(a, env) for a in expr.args] if not isinstance(expr, sympy.Piecewise) else None
    if expr.is_Add:
        out = args[0]
        for a in args[1:]:
            out = out + a
        return out
    if expr.is_Mul:
        out = args[0]
        for a in args[1:]:
            out = out * a
        return out
    if expr.is_Pow:
        return torch.pow(args[0], args[1])
    if isinstance(expr, sympy.re):  # every value is real (or nan)
        return _ir_eval(expr.args[0], env)
    if isinstance(expr, sympy.im):
        return _t(0.0)
    if isinstance(expr, sympy.logic.boolalg.ITE):
        cond, a, b = (_ir_eval(x, env) for x in expr.args)
        return torch.where(cond.bool(), a, b)
    if isinstance(expr, sympy.Piecewise):
        *branches, (last, _) = expr.args
        out = _ir_eval(last, env)
        for value, cond in reversed(branches):
            out = torch.where(_ir_eval(cond, env).bool(), _ir_eval(value, env), out)
        return out
    simple = {
        sympy.exp: torch.exp, sympy.log: torch.log, log1p: torch.log1p, sympy.Abs: torch.abs,
        sympy.sign: torch.sign, sympy.tanh: torch.tanh, sigmoid: torch.sigmoid, sympy.atan2: torch.atan2, sympy.atan: torch.atan,
        sympy.Max: torch.maximum, sympy.Min: torch.minimum, sympy.Lt: torch.lt, sympy.Le: torch.le,
        sympy.Gt: torch.gt, sympy.Ge: torch.ge, sympy.Eq: torch.eq, sympy.Ne: torch.ne,
        sympy.And: torch.logical_and, sympy.Or: torch.logical_or, sympy.Not: torch.logical_not,
    }
    for kind, fn in simple.items():
        if isinstance(expr, kind):
            out = args[0]
            if len(args) == 1:
                return fn(out)
            for a in args[1:]:
                out = fn(out, a)
            return out
    raise TypeError(f"cannot evaluate {type(expr).__name__}")


def evaluate_kernel(kernel: KernelPlan, param, grad, state: dict, h: dict) -> dict:
    env = dict(h)
    env.update(param=param.to(F64), grad=grad.to(F64))
    env.update({name: value.to(F64) for name, value in state.items()})
    for symbol, expr in kernel.host_defs:
        env[symbol.name] = _ir_eval(expr, env)
    for symbol, expr in kernel.body:
        env[symbol.name] = _ir_eval(expr, env)
    return {name: _ir_eval(expr, env).expand(param.shape).clone() for name, expr in kernel.outputs.items()}


def evaluate_plan(plan: Plan, key, param, grad, state: dict, h: dict) -> dict:
    return evaluate_kernel(plan.kernel_for(key), param, grad, state, h)
