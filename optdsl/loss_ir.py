"""Loss rules: check a `loss` spec, lower its value block to SymPy and derive its gradients.

A loss is either *elementwise* (one value per element of the prediction: MSE, BCE, ...) or a
*row* loss (one value per row of an [N, C] prediction, with reductions over the class
dimension: cross entropy, distillation KL, ...). It is a row loss as soon as it uses a row
reduction (`sum`, `mean`, `logsumexp`, `softmax`, `log_softmax`), `onehot`, `num_classes` or an
`index` input.

Every value has a *kind*: HOST (hyperparameters, numbers, `num_classes`), ROW (one per row:
`index` inputs and reductions) or ELEMENT (one per element: the other inputs). In a row loss,
each reduction becomes a symbol `_sum<k>` / `_logsumexp<k>` whose body is an element expression.

Gradients (row losses) are derived by reverse mode over the reductions: with L the row loss and
R_k = reduce_j E_k[j], the adjoint of R_k is dL/dR_k plus, for each later reduction R_m that
reads R_k, adj(R_m) * sum_j w_m[j] dE_m[j]/dR_k, where w = 1 for a sum and exp(E_m[j] - R_m)
(the softmax) for a log-sum-exp; a sum that does not vary by class is folded (C for a sum, 1 for
a softmax), any other becomes a *backward reduction*. The gradient for element j of input x is
sum_k adj(R_k) w_k[j] dE_k[j]/dx. SymPy differentiates each body; nothing is `simplify`-ed.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass, field
from typing import Optional

import sympy
from sympy.codegen.cfunctions import log1p

from . import ast
from .errors import SpecError

HOST, ROW, ELEMENT = 0, 1, 2
KIND_NAMES = {HOST: "host", ROW: "per-row", ELEMENT: "per-element"}

ROLES = {
    "prediction": "the loss's prediction: any shape (elementwise losses) or [N, C] (row losses)",
    "logits": "same as prediction",
    "target": "a tensor of the prediction's shape (broadcast to it)",
    "weight": "a tensor broadcast to the prediction's shape",
    "class_weight": "one value per class, [C] (broadcast over the last dimension in elementwise losses)",
    "index": "one class index per row, [N] (row losses only)",
}
REDUCTIONS = ("mean", "sum", "none")
ROW_FUNCTIONS = ("sum", "mean", "logsumexp", "softmax", "log_softmax", "onehot")
SPECIAL_LOCALS = ("loss", "mean_weight")

# name -> number of arguments
FUNCTIONS = {
    "sqrt": 1, "rsqrt": 1, "exp": 1, "log": 1, "log1p": 1, "abs": 1, "sign": 1, "sigmoid": 1,
    "tanh": 1, "softplus": 1, "logsigmoid": 1, "atan2": 2, "min": 2, "max": 2, "clamp": 3, "lerp": 3,
    "where": 3, "sum": 1, "mean": 1, "logsumexp": 1, "softmax": 1, "log_softmax": 1, "onehot": 1,
}

LANGUAGE_KEYWORDS = frozenset({
    "optimizer", "loss", "import", "hyper", "state", "def", "update", "value", "reduction",
    "differentiable", "if", "elif", "else", "as", "where", "and", "or", "not", "true", "false", "none",
})
# Names the generated module and its kernels use themselves.
GENERATED_NAMES = frozenset({
    "math", "os", "torch", "triton", "tl", "self", "ctx", "h", "reduction", "backend", "num_classes",
    "row", "cols", "cmask", "start", "offsets", "mask", "pid", "n_elements", "coef", "C", "BLOCK",
    "BLOCK_C", "DTYPE", "REDUCE", "saved", "value", "grad_output", "param", "grad", "step", "inf", "pi",
    "True", "False", "None",
})
_BUILTIN_NAMES = frozenset(dir(__import__("builtins"))) - {"input"}

MAX_NODES = 20_000


# -- SymPy functions with derivatives ------------------------------------------------------------


class sigmoid(sympy.Function):
    """1 / (1 + exp(-x)); its derivative is written sigmoid(x) * sigmoid(-x) (no 1 - sigmoid)."""

    nargs = 1

    def fdiff(self, argindex=1):
        x = self.args[0]
        return sigmoid(x) * sigmoid(-x)

    def _eval_is_real(self):
        return self.args[0].is_real


class softplus(sympy.Function):
    """log(1 + exp(x)), printed as max(x, 0) + log1p(exp(-|x|)); derivative sigmoid(x)."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_is_real(self):
        return self.args[0].is_real


class onehot(sympy.Function):
    """1 where the class index equals the argument (an `index` input), else 0."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sympy.Integer(0)

    def _eval_is_real(self):
        return True


def _stable(expr: sympy.Basic) -> sympy.Basic:
    """Value-preserving rewrites towards stable forms (never the reverse):
    log(1 + exp(u)) -> softplus(u), log(sigmoid(u)) -> -softplus(-u), log(1 + u) -> log1p(u)."""

    def fix_log(arg):
        if isinstance(arg, sigmoid):
            return -softplus(-arg.args[0])
        if arg.is_Add and len(arg.args) == 2 and sympy.Integer(1) in arg.args:
            other = arg.args[0] if arg.args[1] == 1 else arg.args[1]
            if isinstance(other, sympy.exp):
                return softplus(other.args[0])
            return log1p(other)
        return sympy.log(arg)

    return expr.replace(lambda e: isinstance(e, sympy.log), lambda e: fix_log(e.args[0]))


# -- results ------------------------------------------------------------------------------------


@dataclass
class Reduction:
    symbol: sympy.Symbol
    op: str  # "sum" or "logsumexp"
    body: sympy.Expr  # over the spec's local names (for the readable reference)
    full: sympy.Expr  # locals substituted: over inputs, hyperparameters and earlier reductions
    level: int = 0  # which pass over the row computes it (a body reading a level-k reduction is level k+1)

    @property
    def weight(self) -> sympy.Expr:
        """dR/dE[j]: 1 for a sum, the softmax exp(E[j] - R) for a log-sum-exp."""
        return sympy.Integer(1) if self.op == "sum" else sympy.exp(self.full - self.symbol)


@dataclass
class LossIR:
    spec: ast.LossSpec
    row: bool  # a row (classification) loss
    symbols: dict  # input / hyper / num_classes name -> Symbol
    kinds: dict  # Symbol -> kind
    lines: list  # reference statements: ("reduce", Reduction) | ("assign", name, expr, is_bool)
    reductions: list  # forward reductions, in order
    loss: sympy.Expr  # full
    mean_weight: Optional[sympy.Expr]  # full, or None (every unmasked row/element counts 1)
    grads: dict = field(default_factory=dict)  # differentiable input -> dL/dx[j] (full)
    adjoints: list = field(default_factory=list)  # (Symbol, expr): adjoint of each forward reduction
    backward_reductions: list = field(default_factory=list)  # Reduction (sums) the adjoints read

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def differentiable(self) -> list[str]:
        return [i.name for i in self.spec.inputs if i.differentiable]

    def element_inputs(self) -> list[ast.LossInput]:
        return [i for i in self.spec.inputs if i.role != "index"]

    def row_inputs(self) -> list[ast.LossInput]:
        return [i for i in self.spec.inputs if i.role == "index"]


# -- checking and lowering ----------------------------------------------------------------------

_RELATIONS = {"<": sympy.Lt, "<=": sympy.Le, ">": sympy.Gt, ">=": sympy.Ge, "==": sympy.Eq, "!=": sympy.Ne}


def _number(value: float) -> sympy.Expr:
    if math.isinf(value):
        return sympy.oo if value > 0 else -sympy.oo
    if value.is_integer() and abs(value) < 2**53:
        return sympy.Integer(int(value))
    if (2 * value).is_integer():
        return sympy.Rational(int(2 * value), 2)
    return sympy.Float(value)


def _is_bool(expr) -> bool:
    return isinstance(expr, sympy.logic.boolalg.Boolean) and not isinstance(expr, sympy.Expr) or (
        isinstance(expr, sympy.Symbol) and expr.is_real is None
    )


def _walk_names(exprs):
    stack = list(exprs)
    while stack:
        e = stack.pop()
        if isinstance(e, ast.Name):
            yield e.id, e
        elif isinstance(e, ast.Call):
            yield "call:" + e.func, e
        if isinstance(e, ast.Unary):
            stack.append(e.operand)
        elif isinstance(e, ast.Binary):
            stack += [e.left, e.right]
        elif isinstance(e, ast.Compare):
            stack += list(e.operands)
        elif isinstance(e, ast.Call):
            stack += list(e.args)


class _Lowering:
    def __init__(self, spec: ast.LossSpec):
        self.spec = spec
        self.symbols: dict[str, sympy.Symbol] = {}
        self.kinds: dict[sympy.Symbol, int] = {}
        self.funcs = {f.name: f for f in spec.funcs}
        self.reductions: list[Reduction] = []
        self.lines: list = []
        self.full: dict[sympy.Symbol, sympy.Basic] = {}  # local symbol -> full value
        self.locals: dict[str, sympy.Symbol] = {}
        self.local_pos: dict[str, object] = {}
        self.used_locals: set[str] = set()
        self.call_stack: list[str] = []

    def error(self, message, pos, func: ast.FuncDef | None = None):
        if func is not None and func.path != self.spec.path:
            return SpecError(message, pos, func.path, func.source)
        return SpecError(message, pos)

    # -- declarations -------------------------------------------------------------------------
    def reserved(self, name, pos, what, func=None):
        if name in LANGUAGE_KEYWORDS:
            raise self.error(f"{name!r} is a keyword of the language and cannot be used as a name", pos, func)
        if keyword.iskeyword(name):
            raise self.error(f"{name!r} is reserved: it is a Python keyword", pos, func)
        if name.startswith("_") or name.endswith("_ptr"):
            raise self.error(f"{name!r} is reserved: names starting with '_' or ending in '_ptr' belong to the generated code", pos, func)
        if name in GENERATED_NAMES:
            raise self.error(f"{name!r} is reserved: the generated code uses this name itself", pos, func)
        if name in _BUILTIN_NAMES and func is None:
            raise self.error(f"{what} {name!r} would shadow the Python builtin {name} in the generated module; choose another name", pos)
        if name in FUNCTIONS and func is None:
            raise self.error(f"{what} {name!r} shadows the builtin function {name}()", pos)

    def declare(self):
        spec = self.spec
        self.reserved(spec.name, spec.name_pos, "the loss class")
        taken: dict[str, str] = {}

        def claim(name, what, pos):
            self.reserved(name, pos, what)
            if name in taken:
                raise self.error(f"duplicate definition of {name!r} (already a {taken[name]})", pos)
            taken[name] = what

        if spec.reduction is not None and spec.reduction not in REDUCTIONS:
            raise self.error(f"unknown reduction {spec.reduction!r}; expected \"mean\", \"sum\" or \"none\"", spec.reduction_pos)
        for hyper in spec.hypers:
            claim(hyper.name, "hyperparameter", hyper.pos)
            if isinstance(hyper.default, (bool, tuple)):
                kind = "flag" if isinstance(hyper.default, bool) else "tuple"
                raise self.error(f"loss hyperparameters are numbers; {hyper.name} is a {kind} (select with a number and where(...))", hyper.pos)
            symbol = sympy.Symbol(hyper.name, real=True)
            self.symbols[hyper.name] = symbol
            self.kinds[symbol] = HOST
        prediction = None
        for inp in spec.inputs:
            claim(inp.name, "input", inp.pos)
            if inp.role not in ROLES:
                roles = ", ".join(ROLES)
                raise self.error(f"unknown role {inp.role!r}; an input is one of: {roles}", inp.role_pos)
            if inp.role in ("prediction", "logits"):
                if inp.default is not None:
                    raise self.error(f"the {inp.role} {inp.name!r} cannot have a default: it is the loss's main argument", inp.pos)
                prediction = prediction or inp
            if inp.role == "index":
                if inp.differentiable:
                    raise self.error(f"an index input holds class numbers and cannot be differentiable", inp.pos)
                if inp.default is not None:
                    raise self.error(f"an index input cannot have a default", inp.pos)
            symbol = sympy.Symbol(inp.name, real=True)
            self.symbols[inp.name] = symbol
            self.kinds[symbol] = ROW if inp.role == "index" else ELEMENT
        if prediction is None:
            raise self.error(f"loss {spec.name} needs a `prediction` (or `logits`) input: `input input: prediction differentiable`", spec.name_pos)
        if not any(i.differentiable for i in spec.inputs):
            raise self.error(f"loss {spec.name} declares no differentiable input: mark the prediction `differentiable`", prediction.pos)
        for func in spec.funcs:
            claim(func.name, "function", func.pos)
            for p in func.params:
                self.reserved(p, func.pos, "parameter", func)
        symbol = sympy.Symbol("num_classes", positive=True)
        self.symbols["num_classes"] = symbol
        self.kinds[symbol] = HOST
        self.taken = taken

        # Row loss or elementwise loss?
        exprs = [s.value for s in spec.body if isinstance(s, ast.Assign)] + [f.body for f in spec.funcs]
        names = list(_walk_names(exprs))
        self.row = any(i.role == "index" for i in spec.inputs) or any(
            n == "num_classes" or (n.startswith("call:") and n[5:] in ROW_FUNCTIONS) for n, _ in names
        )

    # -- helpers -------------------------------------------------------------------------------
    def kind(self, expr) -> int:
        if expr.has(onehot):  # reads an index input, but varies by class
            return ELEMENT
        kinds = [self.kinds.get(s, HOST) for s in expr.free_symbols]
        return max(kinds, default=HOST)

    def number(self, expr, node, what="a number"):
        if _is_bool(expr):
            raise self.error(f"expected {what}, found a condition", node.pos, self.func)
        return expr

    def condition(self, expr, node):
        if not _is_bool(expr):
            raise self.error("expected a condition (a comparison, and/or/not), found a number", node.pos, self.func)
        return expr

    # -- value block ----------------------------------------------------------------------------
    def body(self):
        spec = self.spec
        self.func = None
        for stmt in spec.body:
            if isinstance(stmt, ast.If):
                raise self.error("`if` is not available in a loss value block; select values with where(c, a, b)", stmt.pos)
            name = stmt.target
            if name in self.symbols or name in self.funcs:
                what = self.taken.get(name, "builtin")
                raise self.error(f"cannot assign to {name!r}: it is {'an' if what[0] in 'aeiou' else 'a'} {what}", stmt.pos)
            if name in self.locals:
                raise self.error(f"{name!r} is already assigned (line {self.local_pos[name].line}); a loss value block assigns each name once", stmt.pos)
            if name not in SPECIAL_LOCALS:
                self.reserved(name, stmt.pos, "local")
            value = self.expr(stmt.value, env=None)
            is_bool = _is_bool(value)
            if name in SPECIAL_LOCALS:
                self.number(value, stmt.value, f"a number for `{name}`")
            symbol = sympy.Symbol(name) if is_bool else sympy.Symbol(name, real=True)
            self.kinds[symbol] = self.kind(value)
            self.full[symbol] = value.xreplace(self.full)
            self._check_size(self.full[symbol], stmt.value)
            self.locals[name] = symbol
            self.local_pos[name] = stmt.pos
            self.lines.append(("assign", name, value, is_bool))
        if "loss" not in self.locals:
            raise self.error(f"the value block must assign `loss`", spec.body_pos)
        for name, pos in self.local_pos.items():
            if name not in SPECIAL_LOCALS and name not in self.used_locals:
                raise self.error(f"local {name!r} is assigned but never used", pos)
        loss = self.full[self.locals["loss"]]
        mean_weight = self.full.get(self.locals["mean_weight"]) if "mean_weight" in self.locals else None
        diff = {self.symbols[i.name] for i in spec.inputs if i.differentiable}
        if not (self._reads(loss) & diff):
            raise self.error("`loss` does not depend on any differentiable input", self.local_pos["loss"])
        if mean_weight is not None and not mean_weight.free_symbols:
            raise self.error("`mean_weight` is a constant: leave it out (then every row or element counts 1 in "
                             "the mean)", self.local_pos["mean_weight"])
        if self.row:
            for name in SPECIAL_LOCALS:
                if name in self.locals and self.kinds[self.locals[name]] == ELEMENT:
                    raise self.error(
                        f"`{name}` must be one number per row: reduce over the classes with sum(...), "
                        "logsumexp(...) or onehot(...)", self.local_pos[name])
        if mean_weight is not None:
            if self._reads(mean_weight) & diff:
                raise self.error("`mean_weight` may not depend on a differentiable input", self.local_pos["mean_weight"])
        return loss, mean_weight

    def _reads(self, expr) -> set:
        """The symbols `expr` depends on, through the reductions it reads."""
        reads = set(expr.free_symbols)
        for r in reversed(self.reductions):
            if r.symbol in reads:
                reads |= r.full.free_symbols
        return reads

    def _check_size(self, expr, node):
        count = 0
        for _ in sympy.preorder_traversal(expr):
            count += 1
            if count > MAX_NODES:
                raise self.error(f"this value is too large after inlining (more than {MAX_NODES} nodes)", node.pos)

    # -- expressions ----------------------------------------------------------------------------
    def expr(self, e: ast.Expr, env):
        if isinstance(e, ast.Number):
            return _number(e.value)
        if isinstance(e, ast.Bool):
            return sympy.true if e.value else sympy.false
        if isinstance(e, ast.Name):
            return self.name(e, env)
        if isinstance(e, ast.Unary):
            operand = self.expr(e.operand, env)
            if e.op == "not":
                return sympy.Not(self.condition(operand, e.operand))
            operand = self.number(operand, e.operand)
            return -operand if e.op == "-" else operand
        if isinstance(e, ast.Binary):
            left, right = self.expr(e.left, env), self.expr(e.right, env)
            if e.op in ("and", "or"):
                left, right = self.condition(left, e.left), self.condition(right, e.right)
                return sympy.And(left, right) if e.op == "and" else sympy.Or(left, right)
            left, right = self.number(left, e.left), self.number(right, e.right)
            return {"+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
                    "/": lambda: left / right, "^": lambda: sympy.Pow(left, right)}[e.op]()
        if isinstance(e, ast.Compare):
            operands = [self.number(self.expr(o, env), o) for o in e.operands]
            parts = [_RELATIONS[op](a, b) for op, a, b in zip(e.ops, operands, operands[1:])]
            return sympy.And(*parts)
        if isinstance(e, ast.Call):
            return self.call(e, env)
        raise TypeError(f"cannot lower {e!r}")

    def name(self, e: ast.Name, env):
        if env is not None:  # inside a user function: its parameters only
            if e.id in env:
                return env[e.id]
            if e.id in ("inf", "pi"):
                return sympy.oo if e.id == "inf" else sympy.Float(math.pi)
            raise self.error(f"undefined name {e.id!r} (a function sees only its parameters)", e.pos, self.func)
        if e.id == "inf":
            return sympy.oo
        if e.id == "pi":
            return sympy.Float(math.pi)
        if e.id in self.locals:
            self.used_locals.add(e.id)
            return self.locals[e.id]
        if e.id in self.symbols:
            return self.symbols[e.id]
        if e.id in ("param", "grad", "step"):
            raise self.error(f"{e.id!r} belongs to optimizer rules; a loss reads its declared inputs", e.pos)
        if e.id in SPECIAL_LOCALS:
            raise self.error(f"{e.id!r} is read before it is assigned", e.pos)
        raise self.error(f"undefined name {e.id!r}", e.pos)

    def call(self, e: ast.Call, env):
        f = e.func
        if f in self.funcs:
            return self.inline(e, env)
        if f == "fresh":
            raise self.error("fresh() belongs to optimizer rules (a loss has no state)", e.pos, self.func)
        if f not in FUNCTIONS:
            raise self.error(f"unknown function {f!r}", e.pos, self.func)
        if len(e.args) != FUNCTIONS[f]:
            n = FUNCTIONS[f]
            raise self.error(f"{f}() takes {n} argument{'s' if n != 1 else ''}, got {len(e.args)}", e.pos, self.func)
        args = [self.expr(a, env) for a in e.args]
        if f == "where":
            cond = self.condition(args[0], e.args[0])
            a, b = (self.number(x, n) for x, n in zip(args[1:], e.args[1:]))
            return sympy.Piecewise((a, cond), (b, True))
        args = [self.number(x, n) for x, n in zip(args, e.args)]
        if f == "onehot":
            (arg,) = args
            if not (isinstance(arg, sympy.Symbol) and any(i.role == "index" and i.name == arg.name for i in self.spec.inputs)):
                raise self.error("onehot() takes an `index` input (one class number per row)", e.args[0].pos, self.func)
            return onehot(arg)
        if f in ("sum", "mean", "logsumexp", "softmax", "log_softmax"):
            (arg,) = args
            if self.kind(arg.xreplace(self.full)) != ELEMENT:
                raise self.error(
                    f"{f}() reduces over the classes of a row; its argument must vary by class "
                    "(read a prediction, target, weight or class_weight input)", e.args[0].pos, self.func)
            if f == "sum":
                return self.reduce("sum", arg)
            if f == "mean":
                return self.reduce("sum", arg) / self.symbols["num_classes"]
            lse = self.reduce("logsumexp", arg)
            if f == "logsumexp":
                return lse
            return arg - lse if f == "log_softmax" else sympy.exp(arg - lse)
        if f == "sqrt":
            return sympy.sqrt(args[0])
        if f == "rsqrt":
            return sympy.Pow(args[0], sympy.Rational(-1, 2))
        if f == "exp":
            return sympy.exp(args[0])
        if f == "log":
            return _stable(sympy.log(args[0]))
        if f == "log1p":
            return log1p(args[0])
        if f == "abs":
            return sympy.Abs(args[0])
        if f == "sign":
            return sympy.sign(args[0])
        if f == "sigmoid":
            return sigmoid(args[0])
        if f == "tanh":
            return sympy.tanh(args[0])
        if f == "softplus":
            return softplus(args[0])
        if f == "logsigmoid":
            return -softplus(-args[0])
        if f == "atan2":
            return sympy.atan2(*args)
        if f == "min":
            return sympy.Min(*args)
        if f == "max":
            return sympy.Max(*args)
        if f == "clamp":
            return sympy.Min(sympy.Max(args[0], args[1]), args[2])
        if f == "lerp":
            a, b, w = args
            return a + w * (b - a)
        raise NotImplementedError(f)

    def reduce(self, op, body):
        full = body.xreplace(self.full)
        for r in self.reductions:
            if r.op == op and r.full == full:
                return r.symbol
        symbol = sympy.Symbol(f"_{op}{len(self.reductions)}", real=True)
        levels = [r.level + 1 for r in self.reductions if r.symbol in full.free_symbols]
        r = Reduction(symbol, op, body, full, max(levels, default=0))
        self.kinds[symbol] = ROW
        self.reductions.append(r)
        self.lines.append(("reduce", r))
        return symbol

    def inline(self, e: ast.Call, env):
        func = self.funcs[e.func]
        if e.func in self.call_stack:
            chain = " -> ".join(self.call_stack[self.call_stack.index(e.func):] + [e.func])
            raise self.error(f"recursive function: {chain}", e.pos, self.func)
        if len(e.args) != len(func.params):
            n = len(func.params)
            raise self.error(f"{e.func}() takes {n} argument{'s' if n != 1 else ''}, got {len(e.args)}", e.pos, self.func)
        args = [self.number(self.expr(a, env), a) for a in e.args]
        outer = self.func
        self.call_stack.append(e.func)
        self.func = func
        try:
            value = self.expr(func.body, dict(zip(func.params, args)))
        finally:
            self.call_stack.pop()
            self.func = outer
        return value

    def constraint(self, hyper: ast.Hyper):
        self.func = None
        hyper_names = {h.name for h in self.spec.hypers}
        for name, node in _walk_names([hyper.constraint]):
            if not name.startswith("call:") and name not in hyper_names and name not in ("inf", "pi"):
                raise self.error(f"a constraint may use hyperparameters only; {name!r} is not one", node.pos)
        saved = self.used_locals
        value = self.expr(hyper.constraint, env=None)
        self.used_locals = saved
        return self.condition(value, hyper.constraint)


# -- gradients ----------------------------------------------------------------------------------


def _derive(ir: LossIR) -> None:
    element = {s for s, k in ir.kinds.items() if k == ELEMENT}
    num_classes = ir.symbols["num_classes"]
    targets = [ir.symbols[name] for name in ir.differentiable]
    if not ir.row:
        for name, x in zip(ir.differentiable, targets):
            ir.grads[name] = _stable(sympy.diff(ir.loss, x))
        return
    adjoint_symbols = [sympy.Symbol(f"_adj{k}", real=True) for k in range(len(ir.reductions))]
    adjoint = {}
    for k in reversed(range(len(ir.reductions))):
        rk = ir.reductions[k]
        total = sympy.diff(ir.loss, rk.symbol)
        for m in range(k + 1, len(ir.reductions)):
            rm = ir.reductions[m]
            inner = sympy.diff(rm.full, rk.symbol)
            if inner == 0:
                continue
            if not (inner.free_symbols & element or inner.has(onehot)):
                folded = inner * (num_classes if rm.op == "sum" else 1)
            else:
                folded = _backward_reduction(ir, rm.weight * inner)
            total += adjoint_symbols[m] * folded
        adjoint[k] = total
    ir.adjoints = [(adjoint_symbols[k], _stable(adjoint[k])) for k in range(len(ir.reductions))]
    for name, x in zip(ir.differentiable, targets):
        g = sympy.Integer(0)
        for k, r in enumerate(ir.reductions):
            d = sympy.diff(r.full, x)
            if d != 0:
                g += adjoint_symbols[k] * r.weight * d
        ir.grads[name] = _stable(g)


def _backward_reduction(ir: LossIR, body) -> sympy.Symbol:
    for r in ir.backward_reductions:
        if r.full == body:
            return r.symbol
    symbol = sympy.Symbol(f"_bsum{len(ir.backward_reductions)}", real=True)
    ir.backward_reductions.append(Reduction(symbol, "sum", body, body))
    ir.kinds[symbol] = ROW
    return symbol


def _check_derivatives(ir: LossIR) -> None:
    exprs = list(ir.grads.values()) + [e for _, e in ir.adjoints] + [r.full for r in ir.backward_reductions]
    for expr in exprs:
        if expr.has(sympy.Derivative) or expr.has(sympy.Subs):
            raise SpecError("cannot differentiate this loss symbolically (a function without a derivative)",
                            ir.spec.body_pos, ir.spec.path, ir.spec.source)


def lower(spec: ast.LossSpec) -> LossIR:
    """Check a parsed loss spec, lower it to SymPy and derive its gradients."""
    try:
        lowering = _Lowering(spec)
        lowering.declare()
        for hyper in spec.hypers:
            if hyper.constraint is not None:
                lowering.constraint(hyper)
        loss, mean_weight = lowering.body()
    except SpecError as exc:
        raise exc.located(spec.path, spec.source) from None
    ir = LossIR(spec, lowering.row, lowering.symbols, lowering.kinds, lowering.lines, lowering.reductions,
                _stable(loss), mean_weight)
    _derive(ir)
    _check_derivatives(ir)
    return ir
