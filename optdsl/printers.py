"""Code printers: SymPy IR → Triton and host-Python source, checked AST → readable PyTorch.

The SymPy printers subclass `StrPrinter`, which already handles precedence and writes products
with negative powers as divisions; we override only what differs in the target language.
"""

from __future__ import annotations

import math

import sympy
from sympy.codegen.cfunctions import log1p
from sympy.printing.precedence import precedence
from sympy.printing.str import StrPrinter

from . import ast
from .ast import ELEMENT, HOST, join_kinds
from .checker import REDUCTIONS
from .ir import sigmoid

# Triton helpers for functions without a core `tl` op; written with core ops only so the same
# code runs in the interpreter (CI) and on the GPU.
TRITON_HELPERS = {
    "_scalar_pow": '''
@_jit
def _scalar_pow(x, y):
    # x ** y as Python's float math gives it: x ** 0 = 1 ** y = 1, and a negative x to an
    # integral y keeps the sign of an odd power (nan for a non-integral y).
    magnitude = tl.exp(y * tl.log(tl.abs(x)))
    integral = tl.floor(y) == y
    odd = integral & (tl.floor(y * 0.5) * 2.0 != y)
    signed = tl.where(x < 0, tl.where(integral, tl.where(odd, -magnitude, magnitude), float('nan')), magnitude)
    return tl.where((y == 0) | (x == 1), 1.0, signed)
''',
    "_sign": '''
@_jit
def _sign(x):
    # sign(0) = 0 and sign(nan) = nan, as torch.sign.
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x * 0.0))
''',
    "_log1p": '''
@_jit
def _log1p(x):
    # log(1 + x) without cancellation for small x (Goldberg's trick).
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / (u - 1.0)))
''',
    "_tanh": '''
@_jit
def _tanh(x):
    # tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|); a series keeps small |x| accurate.
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    large = (1.0 - e) / (1.0 + e)
    x2 = x * x
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0))))
    return tl.where(x < 0, -1.0, 1.0) * tl.where(ax < 0.0625, small, large)
''',
    "_atan2": '''
@_jit
def _atan(x):
    # Cephes atanf: reduce |x| to [0, tan(pi/8)], then a degree-9 odd polynomial.
    ax = tl.abs(x)
    big = ax > 2.414213562373095
    mid = ax > 0.4142135623730951
    z = tl.where(big, -1.0 / ax, tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    y0 = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z2 = z * z
    p = (((8.05374449538e-2 * z2 - 1.38776856032e-1) * z2 + 1.99777106478e-1) * z2 - 3.33329491539e-1) * z2 * z + z
    return tl.where(x < 0, -(y0 + p), y0 + p)


@_jit
def _atan2(y, x):
    # Quadrant handling of torch.atan2 (and C's atan2f) around the helper above.
    base = _atan(y / x)
    pi = 3.141592653589793
    shifted = tl.where(y < 0, base - pi, base + pi)
    result = tl.where(x < 0, shifted, base)
    on_axis = tl.where(y > 0, pi / 2, tl.where(y < 0, -pi / 2, tl.where(x < 0, tl.where(y < 0, -pi, pi), 0.0 * y)))
    return tl.where(x == 0, on_axis, result)
''',
}

# Host helpers share the module namespace with the Triton helpers above, so their names differ
# from those (a host `_sign` would be replaced by the @_jit `_sign` defined after it).
HOST_HELPERS = {
    "_sqrt": "def _sqrt(x):\n    return math.sqrt(x) if x >= 0 else math.nan\n",
    "_log": "def _log(x):\n    return math.log(x) if x > 0 else (-math.inf if x == 0 else math.nan)\n",
    "_host_log1p": "def _host_log1p(x):\n    return math.log1p(x) if x > -1 else (-math.inf if x == -1 else math.nan)\n",
    "_exp": "def _exp(x):\n    return math.exp(x) if x < 709.78 else math.inf\n",
    "_host_sign": "def _host_sign(x):\n    return float((x > 0) - (x < 0)) if x == x else x\n",
    "_sigmoid": "def _sigmoid(x):\n    return 1 / (1 + _exp(-x))\n",
    "_pow": ("def _pow(x, y):\n    try:\n        result = x ** y\n    except (OverflowError, ZeroDivisionError):\n"
             "        return math.inf\n    return math.nan if isinstance(result, complex) else result\n"),
}
HOST_HELPERS.update({
    "_cosine": (
        "def _cosine(x, y, eps, over, h):\n"
        "    \"\"\"F.cosine_similarity's value: x.y / (max(|x|, eps) max(|y|, eps)), per tensor, row or column.\"\"\"\n"
        "    x, y = torch.broadcast_tensors(x, y)\n"
        "    norms = _reduce(\"norm\", x, h, over).clamp(min=eps) * _reduce(\"norm\", y, h, over).clamp(min=eps)\n"
        "    return _reduce(\"sum\", x * y, h, over) / norms\n"),
})
HOST_HELPER_DEPENDENCIES = {"_sigmoid": ("_exp",)}
HOST_FUNCTIONS = {"exp": "_exp", "log": "_log", "log1p": "_host_log1p", "sigmoid": "_sigmoid", "sign": "_host_sign"}
assert not set(HOST_HELPERS) & set(TRITON_HELPERS) and not set(HOST_HELPERS) & {"_atan", "_tanh"}


def float_literal(value: float) -> str:
    if math.isinf(value):
        return "float('inf')" if value > 0 else "float('-inf')"
    text = repr(float(value))
    return text


class _Common(StrPrinter):
    """Number printing shared by the kernel and host printers."""

    def __init__(self):
        super().__init__({"full_prec": True})
        self.helpers: set[str] = set()

    def _print_Float(self, expr):
        return float_literal(float(expr))

    def _print_Rational(self, expr):
        return float_literal(float(expr))

    def _print_Half(self, expr):
        return "0.5"

    def _print_Infinity(self, expr):
        return "float('inf')"

    def _print_NegativeInfinity(self, expr):
        return "float('-inf')"

    def _print_Pi(self, expr):
        return float_literal(math.pi)

    def _print_Exp1(self, expr):
        return float_literal(math.e)

    def _print_NaN(self, expr):
        return "float('nan')"

    # Every value here is real (or nan), but SymPy writes |b^e| as b^re(e) when it cannot tell
    # that e is real (log1p(x) for any x, say).
    def _print_re(self, expr):
        return self._print(expr.args[0])

    def _print_im(self, expr):
        return "0.0"

    def _print_BooleanTrue(self, expr):
        return "True"

    def _print_BooleanFalse(self, expr):
        return "False"

    def _print_Relational(self, expr):
        op = {"==": "==", "!=": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}[expr.rel_op]
        prec = precedence(expr)
        return f"({self.parenthesize(expr.lhs, prec)} {op} {self.parenthesize(expr.rhs, prec)})"

    def _integer_power(self, base, n):
        text = self.parenthesize(base, precedence(sympy.Mul(base, base, evaluate=False)) + 1)
        return " * ".join([text] * n)


class TritonPrinter(_Common):
    """SymPy → Triton expression source (math in the kernel's compute dtype)."""

    def _print_Integer(self, expr):
        # Float literals keep every operand of tl.maximum / tl.where floating point.
        return float_literal(float(expr))

    def _print_Mul(self, expr):
        # StrPrinter writes a lone denominator factor without parentheses (`n/d`), but an integer
        # power prints as a product here: `n/b**2` must become `n/(b * b)`, not `n/b * b`.
        factors = sympy.Mul.make_args(expr)
        below = [f for f in factors if (f.is_Pow and f.exp.as_coeff_Mul()[0] < 0) or (f.is_Rational and f.q != 1)]
        if len(below) == 1 and below[0].is_Pow and below[0].exp.is_Integer and -8 <= int(below[0].exp) <= -2:
            (denominator,) = below
            numerator = sympy.Mul(*[f for f in factors if f is not denominator])
            text = self._print(numerator) if numerator.is_Mul or numerator.is_Number else \
                self.parenthesize(numerator, precedence(expr), strict=False)
            return f"{text}/({self._integer_power(denominator.base, -int(denominator.exp))})"
        return super()._print_Mul(expr)

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.base, expr.exp
        if exp == sympy.Rational(1, 2):
            return f"tl.sqrt({self._print(base)})"
        if exp == sympy.Rational(-1, 2):
            return f"tl.rsqrt({self._print(base)})"
        if exp.is_Integer and 2 <= int(exp) <= 8:
            return self._integer_power(base, int(exp))
        if exp.is_Integer and -8 <= int(exp) <= -1:
            # Print the base once: printing it twice per level is exponential in the nesting depth.
            if int(exp) == -1:
                return f"1.0 / {self.parenthesize(base, 1000)}"
            return f"1.0 / ({self._integer_power(base, -int(exp))})"
        if exp.is_Integer:
            # Larger integer powers via exp/log of |base|, with the sign of an odd power: a negative
            # base to an integer power is a number, not nan (SymPy folds (g^3)^4 into g^12).
            text = self._print(base)
            magnitude = f"tl.exp({float(exp)!r} * tl.log(tl.abs({text})))"
            return magnitude if int(exp) % 2 == 0 else f"tl.where({text} < 0, -{magnitude}, {magnitude})"
        return f"tl.exp({self._print(exp)} * tl.log({self._print(base)}))"

    def _print_Function(self, expr):
        args = [self._print(a) for a in expr.args]
        name = type(expr).__name__
        simple = {"exp": "tl.exp", "log": "tl.log", "sigmoid": "tl.sigmoid"}
        if name in simple:
            return f"{simple[name]}({args[0]})"
        helper = {"log1p": "_log1p", "tanh": "_tanh", "sign": "_sign", "atan2": "_atan2", "atan": "_atan"}.get(name)
        if helper is None:
            raise NotImplementedError(f"no Triton lowering for {name}")
        self.helpers.add("_atan2" if helper == "_atan" else helper)  # _atan is defined with _atan2
        return f"{helper}({', '.join(args)})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sign = _print_Function
    _print_tanh = _print_Function
    _print_atan2 = _print_Function
    _print_atan = _print_Function  # SymPy writes atan2(y, x) with x known positive as atan(y / x)

    def _print_Abs(self, expr):
        return f"tl.abs({self._print(expr.args[0])})"

    def _chain(self, expr, combine):
        """The printed arguments folded left to right: combine(so_far, next)."""
        args = [self._print(a) for a in expr.args]
        text = args[0]
        for arg in args[1:]:
            text = combine(text, arg)
        return text

    def _print_Max(self, expr):
        return self._chain(expr, lambda a, b: f"tl.maximum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)")

    def _print_Min(self, expr):
        return self._chain(expr, lambda a, b: f"tl.minimum({a}, {b}, propagate_nan=tl.PropagateNan.ALL)")

    def _print_Piecewise(self, expr):
        *branches, (last, cond) = expr.args
        text = self._print(last)
        for value, condition in reversed(branches):
            text = f"tl.where({self._print(condition)}, {self._print(value)}, {text})"
        return text

    def _print_And(self, expr):
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_ITE(self, expr):
        # SymPy folds a where() inside a condition into ITE(a, b, c): b where a holds, else c.
        a, b, c = (self._print(x) for x in expr.args)
        return f"(({a} & {b}) | ((~{a}) & {c}))"

    def _print_Not(self, expr):
        # `~`, not `not`: the compiled kernel maps `not` to an elementwise not, but the interpreter
        # runs Python's `not`, which collapses a block of conditions to one bool.
        return f"(~{self._print(expr.args[0])})"


class ScalarPrinter(TritonPrinter):
    """SymPy → Triton over one program's float64 scalars: the host scalars (bias corrections,
    lr * weight_decay, ...) that a multi-tensor kernel computes per tensor from its `step` and the
    hyperparameter buffer. Where Python's float math and IEEE differ (x ** y for a negative x and
    an integral y, max/min of a NaN) it follows `HostPrinter`, so both backends agree."""

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.base, expr.exp
        if exp.is_Integer or exp in (sympy.Rational(1, 2), sympy.Rational(-1, 2)):
            return super()._print_Pow(expr, rational)
        self.helpers.add("_scalar_pow")
        return f"_scalar_pow({self._print(base)}, {self._print(exp)})"

    def _print_Function(self, expr):
        if type(expr).__name__ == "sigmoid":  # as the host helper computes it
            return f"1.0 / (1.0 + tl.exp(-{self.parenthesize(expr.args[0], 1000)}))"
        return super()._print_Function(expr)

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sign = _print_Function
    _print_tanh = _print_Function
    _print_atan2 = _print_Function
    _print_atan = _print_Function

    # Python's max(a, b, ...): the first argument unless a later one compares greater.
    def _print_Max(self, expr):
        return self._chain(expr, lambda a, b: f"tl.where({b} > {a}, {b}, {a})")

    def _print_Min(self, expr):
        return self._chain(expr, lambda a, b: f"tl.where({b} < {a}, {b}, {a})")


class HostPrinter(_Common):
    """SymPy → Python over floats, computed once per tensor per step outside the kernel.

    Helpers return inf/nan where `math` would raise, so host math follows IEEE rules as the
    kernel does.
    """

    def _helper(self, name, *args):
        self.helpers.add(name)
        self.helpers.update(HOST_HELPER_DEPENDENCIES.get(name, ()))
        return f"{name}({', '.join(self._print(a) for a in args)})"

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.base, expr.exp
        if exp == sympy.Rational(1, 2):
            return self._helper("_sqrt", base)
        if exp == sympy.Rational(-1, 2):
            return f"1 / {self._helper('_sqrt', base)}"
        if exp == -1:
            return f"1 / {self.parenthesize(base, precedence(expr))}"
        if exp.is_Integer and int(exp) > 0:
            return f"{self.parenthesize(base, precedence(expr) + 1)} ** {int(exp)}"
        return self._helper("_pow", base, exp)

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name in HOST_FUNCTIONS:
            return self._helper(HOST_FUNCTIONS[name], *expr.args)
        if name in ("tanh", "atan2", "atan"):
            return f"math.{name}({', '.join(self._print(a) for a in expr.args)})"
        raise NotImplementedError(f"no host lowering for {name}")

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sign = _print_Function
    _print_tanh = _print_Function
    _print_atan2 = _print_Function
    _print_atan = _print_Function

    def _print_Abs(self, expr):
        return f"abs({self._print(expr.args[0])})"

    # Numbers print as floats here (as in Piecewise below): max(3, x) would hand the kernel an int
    # when 3 wins, and Triton types an int argument as int32, which tl.exp and friends reject.
    def _print_Max(self, expr):
        return f"max({', '.join(self._float_arg(a) for a in expr.args)})"

    def _print_Min(self, expr):
        return f"min({', '.join(self._float_arg(a) for a in expr.args)})"

    def _float_arg(self, arg):
        return float_literal(float(arg)) if arg.is_Number else self._print(arg)

    def _print_Piecewise(self, expr):
        # Branch values print as floats so the kernel argument is a float whichever is taken.
        def value_text(value):
            return float_literal(float(value)) if value.is_Number else self._print(value)

        *branches, (last, _) = expr.args
        text = value_text(last)
        for value, condition in reversed(branches):
            text = f"({value_text(value)} if {self._print(condition)} else {text})"
        return text

    def _print_And(self, expr):
        return "(" + " and ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        return "(" + " or ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        return f"(not {self._print(expr.args[0])})"

    def _print_ITE(self, expr):
        a, b, c = (self._print(x) for x in expr.args)
        return f"({b} if {a} else {c})"


# ---------------------------------------------------------------------------------------------
# Checked AST → readable PyTorch (the reference implementation).

_PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "+": 5, "-": 5, "*": 6, "/": 6, "neg": 7, "^": 8, "atom": 9}


class ReferencePrinter:
    """Prints spec expressions as Python: floats and `math` for host values, torch for tensors.

    Names are kept from the spec, and user functions arrive already inlined by the checker.
    """

    TORCH_UNARY = {"sqrt": "torch.sqrt", "rsqrt": "torch.rsqrt", "exp": "torch.exp", "log": "torch.log",
                   "log1p": "torch.log1p", "abs": "torch.abs", "sign": "torch.sign", "sigmoid": "torch.sigmoid",
                   "tanh": "torch.tanh"}
    HOST_UNARY = {"sqrt": "_sqrt", "abs": "abs", "tanh": "math.tanh", **HOST_FUNCTIONS}

    def __init__(self, global_texts=None):
        self.helpers: set[str] = set()
        self.global_texts = global_texts or {}  # id(global reduction call) -> its value's text

    def expr(self, e: ast.Expr) -> str:
        return self._expr(e)[0]

    def _wrap(self, text_prec, want):
        text, prec = text_prec
        return f"({text})" if prec < want else text

    def _expr(self, e):
        if isinstance(e, ast.Number):
            text = e.text
            if "e" in text.lower() and "." not in text.lower().split("e")[0]:
                text = float_literal(e.value)
            elif text.isdigit():
                # Python rejects leading zeros (`007`), and torch rejects ints beyond int64.
                text = str(int(text)) if int(text) < 2**53 else float_literal(e.value)
            return text, _PRECEDENCE["atom"]
        if isinstance(e, ast.Bool):
            return ("True" if e.value else "False"), _PRECEDENCE["atom"]
        if isinstance(e, ast.Name):
            if e.id == "inf":
                return "math.inf", _PRECEDENCE["atom"]
            if e.id == "pi":
                return "math.pi", _PRECEDENCE["atom"]
            return e.id, _PRECEDENCE["atom"]
        if isinstance(e, ast.Unary):
            if e.op == "not":
                if e.kind not in (HOST, None):
                    return f"~{self._wrap(self._expr(e.operand), _PRECEDENCE['atom'])}", _PRECEDENCE["neg"]
                return f"not {self._wrap(self._expr(e.operand), _PRECEDENCE['not'])}", _PRECEDENCE["not"]
            if e.op == "+":
                return self._expr(e.operand)
            return f"-{self._wrap(self._expr(e.operand), _PRECEDENCE['neg'])}", _PRECEDENCE["neg"]
        if isinstance(e, ast.Binary):
            if e.op in ("and", "or"):
                if e.kind not in (HOST, None):
                    op = "&" if e.op == "and" else "|"
                    left = self._wrap(self._expr(e.left), _PRECEDENCE["atom"])
                    right = self._wrap(self._expr(e.right), _PRECEDENCE["atom"])
                    return f"{left} {op} {right}", _PRECEDENCE["cmp"]
                prec = _PRECEDENCE[e.op]
                return f"{self._wrap(self._expr(e.left), prec)} {e.op} {self._wrap(self._expr(e.right), prec + 1)}", prec
            if e.op == "^":
                prec = _PRECEDENCE["^"]
                # Print each operand once (twice per level is exponential in the nesting depth).
                if e.kind == HOST and not (isinstance(e.right, ast.Number) and e.right.value.is_integer()):
                    self.helpers.add("_pow")
                    return f"_pow({self.expr(e.left)}, {self.expr(e.right)})", _PRECEDENCE["atom"]
                base = self._wrap(self._expr(e.left), prec + 1)
                exponent = self._wrap(self._expr(e.right), prec)
                return f"{base} ** {exponent}", prec
            prec = _PRECEDENCE[e.op]
            left = self._wrap(self._expr(e.left), prec)
            right = self._wrap(self._expr(e.right), prec + 1)
            return f"{left} {e.op} {right}", prec
        if isinstance(e, ast.Compare):
            parts = [self._wrap(self._expr(o), _PRECEDENCE["+"]) for o in e.operands]
            if e.kind == HOST:
                text = parts[0] + "".join(f" {op} {p}" for op, p in zip(e.ops, parts[1:]))
                return text, _PRECEDENCE["cmp"]
            pairs = [f"({a} {op} {b})" for a, op, b in zip(parts, e.ops, parts[1:])]
            return " & ".join(pairs), (_PRECEDENCE["atom"] if len(pairs) == 1 else _PRECEDENCE["cmp"])
        if isinstance(e, ast.Call):
            return self._call(e), _PRECEDENCE["atom"]
        raise TypeError(f"cannot print {e!r}")

    def _call(self, e: ast.Call) -> str:
        printed = [self._expr(a) for a in e.args]
        args = [text for text, _ in printed]
        kinds = [a.kind for a in e.args]
        f = e.func
        if f == "fresh":
            return f"fresh_{e.args[0].id}"
        if f in REDUCTIONS and not (f in ("min", "max") and len(args) == 2):
            return self._reduction(e, args)
        if e.kind == HOST:
            if f == "rsqrt":
                self.helpers.add("_sqrt")
                return f"(1 / _sqrt({args[0]}))"
            if f in self.HOST_UNARY:
                name = self.HOST_UNARY[f]
                if name.startswith("_"):
                    self.helpers.add(name)
                    if name == "_sigmoid":
                        self.helpers.add("_exp")
                return f"{name}({args[0]})"
            if f == "atan2":
                return f"math.atan2({args[0]}, {args[1]})"
            if f in ("min", "max"):
                return f"{f}({args[0]}, {args[1]})"
            if f == "clamp":
                return f"min(max({args[0]}, {args[1]}), {args[2]})"
            if f == "lerp":
                return self._lerp(printed)
            if f == "where":
                return f"({args[1]} if {args[0]} else {args[2]})"
        else:
            if f in self.TORCH_UNARY:
                return f"{self.TORCH_UNARY[f]}({args[0]})"
            if f == "atan2":
                return f"torch.atan2({self._tensor(args[0], kinds[0], args[1])}, {self._tensor(args[1], kinds[1], args[0])})"
            if f in ("min", "max"):
                fn = "torch.minimum" if f == "min" else "torch.maximum"
                bound = "max" if f == "min" else "min"
                if kinds[0] != HOST and kinds[1] != HOST:
                    return f"{fn}({args[0]}, {args[1]})"
                tensor, scalar = (args[0], args[1]) if kinds[0] != HOST else (args[1], args[0])
                return f"torch.clamp({tensor}, {bound}={scalar})"
            if f == "clamp":
                x = self._tensor(args[0], kinds[0], args[1] if kinds[1] != HOST else args[2])
                if kinds[1] == kinds[2]:
                    return f"torch.clamp({x}, {args[1]}, {args[2]})"
                return f"torch.clamp(torch.clamp({x}, min={args[1]}), max={args[2]})"
            if f == "lerp":
                if kinds[0] != HOST and kinds[1] != HOST:
                    return f"torch.lerp({args[0]}, {args[1]}, {args[2]})"
                return self._lerp(printed)
            if f == "where":
                if kinds[0] == HOST:
                    # Either branch may be taken, and the value is used as a tensor.
                    a, b = (t if k != HOST else f"torch.full_like(grad, {t})" for t, k in zip(args[1:], kinds[1:]))
                    return f"({a} if {args[0]} else {b})"
                if kinds[1] == HOST and kinds[2] == HOST:
                    # torch.where(c, 0.5, 2.0) has the default dtype (float32), not the compute dtype.
                    return f"torch.where({args[0]}, torch.full_like(grad, {args[1]}), {args[2]})"
                return f"torch.where({args[0]}, {args[1]}, {args[2]})"
        raise NotImplementedError(f"no reference lowering for {f}")

    # Reductions through `_reduce` (staged.py.j2): torch's own reduction of the tensor, or of each
    # row / column of its (shape[0], rest) view keeping the reduced dimensions, finished across the
    # shards of a sharded (DTensor) parameter.
    def _reduction(self, e: ast.Call, args) -> str:
        base, result = REDUCTIONS[e.func]
        if result == "global":
            return f"({self.global_texts[id(e)]})"
        x, y = args[0], (args[1] if len(args) > 1 else None)
        over = {"uniform": "tensor", "row": "row", "col": "col"}[result]
        if base == "cosine":
            self.helpers.add("_cosine")
            eps = args[2] if len(args) == 3 else "1e-8"
            return f'_cosine({x}, {y}, {eps}, "{over}", h)'
        kind = join_kinds(*(a.kind for a in e.args[:2] if a.kind is not None))
        extra = "" if over == "tensor" and kind == ELEMENT else (f', "{over}"' if kind == ELEMENT else f', "{over}", "{kind}"')
        if base == "dot":
            return f'_reduce("sum", ({x}) * ({y}), h{extra})'
        if base == "rms":
            return f'torch.sqrt(_reduce("mean", torch.square({x}), h{extra}))'
        return f'_reduce("{base}", {x}, h{extra})'

    def _lerp(self, printed) -> str:
        """a + w * (b - a), parenthesized: the caller takes a call's text as an atom."""
        (a, b, w), plus = printed, _PRECEDENCE["+"]
        return (f"({self._wrap(a, plus)} + {self._wrap(w, _PRECEDENCE['*'])} * "
                f"({self._wrap(b, plus)} - {self._wrap(a, plus + 1)}))")

    @staticmethod
    def _tensor(text, kind, like):
        return text if kind != HOST else f"torch.full_like({like}, {text})"


class TorchPrinter(_Common):
    """SymPy → PyTorch over device values (0-dim tensors, per-row and per-column tensors) and host
    floats, for the small per-tensor computations of a staged step (reductions of per-row values,
    new row/column/scalar states). Host-only subexpressions are hoisted before printing, so every
    function here has a tensor argument."""

    TORCH_FUNCTIONS = {"exp": "torch.exp", "log": "torch.log", "log1p": "torch.log1p", "sigmoid": "torch.sigmoid",
                       "tanh": "torch.tanh", "sign": "torch.sign", "atan2": "torch.atan2", "atan": "torch.atan"}

    def __init__(self, device_symbols):
        super().__init__()
        self.device = frozenset(device_symbols)

    def _on_device(self, expr) -> bool:
        return bool(expr.free_symbols & self.device)

    def _print_Pow(self, expr, rational=False):
        base, exp = expr.base, expr.exp
        if exp == sympy.Rational(1, 2):
            return f"torch.sqrt({self._print(base)})"
        if exp == sympy.Rational(-1, 2):
            return f"torch.rsqrt({self._print(base)})"
        if exp == -1:
            return f"1 / {self.parenthesize(base, precedence(expr))}"
        if exp.is_Integer and int(exp) > 0:
            return f"{self.parenthesize(base, precedence(expr) + 1)} ** {int(exp)}"
        return f"torch.pow({self._print(base)}, {self._print(exp)})"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name not in self.TORCH_FUNCTIONS:
            raise NotImplementedError(f"no torch lowering for {name}")
        return f"{self.TORCH_FUNCTIONS[name]}({', '.join(self._print(a) for a in expr.args)})"

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sign = _print_Function
    _print_tanh = _print_Function
    _print_atan2 = _print_Function
    _print_atan = _print_Function

    def _print_Abs(self, expr):
        return f"torch.abs({self._print(expr.args[0])})"

    def _minmax(self, expr, both, bound):
        device = [a for a in expr.args if self._on_device(a)]
        host = [a for a in expr.args if not self._on_device(a)]
        text = self._print(device[0])
        for arg in device[1:]:
            text = f"{both}({text}, {self._print(arg)})"
        for arg in host:
            value = float_literal(float(arg)) if arg.is_Number else self._print(arg)
            text = f"torch.clamp({text}, {bound}={value})"
        return text

    def _print_Max(self, expr):
        return self._minmax(expr, "torch.maximum", "min")

    def _print_Min(self, expr):
        return self._minmax(expr, "torch.minimum", "max")

    def _print_Piecewise(self, expr):
        *branches, (last, _) = expr.args
        text = self._print(last)
        for value, condition in reversed(branches):
            if self._on_device(condition):
                text = f"torch.where({self._print(condition)}, {self._print(value)}, {text})"
            else:
                text = f"({self._print(value)} if {self._print(condition)} else {text})"
        return text

    def _logical(self, expr, device_op, host_op):
        if not self._on_device(expr):
            return "(" + host_op.join(self._print(a) for a in expr.args) + ")"
        # A host flag next to a tensor condition: make it a bool tensor, as `flag & tensor` of a
        # Python bool gives an integer tensor.
        parts = [self._print(a) if self._on_device(a) else f"torch.tensor(bool({self._print(a)}))" for a in expr.args]
        return "(" + device_op.join(parts) + ")"

    def _print_And(self, expr):
        return self._logical(expr, " & ", " and ")

    def _print_Or(self, expr):
        return self._logical(expr, " | ", " or ")

    def _print_Not(self, expr):
        return f"(~{self._print(expr.args[0])})" if self._on_device(expr) else f"(not {self._print(expr.args[0])})"

    def _print_ITE(self, expr):
        a, b, c = (self._print(x) for x in expr.args)
        if self._on_device(expr) and self._on_device(expr.args[0]):
            return f"(({a} & {b}) | ((~{a}) & {c}))"
        return f"({b} if {a} else {c})"
