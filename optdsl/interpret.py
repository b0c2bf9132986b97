"""Plain fp64 interpretations, independent of code generation, used to check the compiler:

* `interpret_step` walks the checked AST (user functions inlined, nothing simplified) with torch
  float64 ops, treating every value — host or element — as a tensor.
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
from .checker import CheckedSpec
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
        return _AST_FUNCTIONS[e.func](*[_eval(a, env) for a in e.args])
    raise TypeError(f"cannot interpret {e!r}")


def interpret_step(checked: CheckedSpec, param, grad, state: dict, h: dict) -> dict:
    """One step of the spec as written. Returns the new values of param and of assigned states."""
    env = dict(h)
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

    run(checked.body)
    shape = param.shape
    # Copies: a result may be an input itself (`m = param`), which the caller may then update in place.
    return {name: _t(env[name]).expand(shape).clone() for name in assigned}


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
