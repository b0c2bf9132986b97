"""The in-place reference: the spec's update written with in-place and fused-scalar torch ops.

`_reference` (codegen `_reference_body`) builds every value as a new tensor and the runtime copies
the results back into the parameter and its states. On the CPU that costs several ATen dispatches
per element-wise op where torch.optim's for-loop issues one (`param.add_(grad, alpha=-lr)`). For
float32/float64 contiguous tensors the generated module runs `_reference_inplace` instead: the same
statements, in the same order, except that

* every assignment to `param` or a state writes into that tensor (`param.sub_(g, alpha=lr)`,
  `exp_avg.lerp_(g, 1 - beta1)`, `exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)`,
  `param.addcdiv_(exp_avg, denom, value=...)`, else `target.copy_(value)`);
* `a + c * x` with a host coefficient `c` is one op (`torch.add(a, x, alpha=c)`);
* a term `h * x` added to a value, where `h` is a hyperparameter whose default is 0 (an optional
  term: weight decay), is skipped while `h == 0`, as torch.optim skips it (`if weight_decay != 0`).
  On finite values this changes nothing (at most the sign of a zero); with an infinite or NaN `x`
  it keeps torch.optim's result instead of the spec's `0 * inf`.

Writing a tensor in place is only correct when nothing reads its old value afterwards through
another name (`v = exp_avg_sq` followed by a new `exp_avg_sq` and a read of `v`; swaps). The check
below is conservative (it ignores which branch of an `if` runs); a spec that fails it gets no
in-place reference and keeps the copy-back path.
"""

from __future__ import annotations

from . import ast
from .ast import ELEMENT, HOST


def _names(e) -> set[str]:
    if isinstance(e, ast.Name):
        return {e.id}
    if isinstance(e, ast.Unary):
        return _names(e.operand)
    if isinstance(e, ast.Binary):
        return _names(e.left) | _names(e.right)
    if isinstance(e, ast.Compare):
        return set().union(*(_names(o) for o in e.operands))
    if isinstance(e, ast.Call):
        return set().union(set(), *(_names(a) for a in e.args))
    return set()


def _flatten(statements, guards=frozenset()):
    """(assignment or None for a condition, names it reads, hyperparameters known to be nonzero
    there) in program order, every branch included."""
    for stmt in statements:
        if isinstance(stmt, ast.Assign):
            yield stmt, _names(stmt.value), guards
            continue
        for cond, body in stmt.branches:
            yield None, _names(cond), guards
            yield from _flatten(body, guards | _nonzero(cond))
        yield from _flatten(stmt.orelse, guards)


def _nonzero(cond) -> set[str]:
    """`h != 0` / `h > 0`: the body of the branch runs only while `h` is nonzero."""
    if (isinstance(cond, ast.Compare) and len(cond.ops) == 1 and cond.ops[0] in ("!=", ">")
            and isinstance(cond.operands[0], ast.Name) and isinstance(cond.operands[1], ast.Number)
            and cond.operands[1].value == 0):
        return {cond.operands[0].id}
    return set()


def _returned_unchanged(e) -> list[ast.Expr]:
    """The subexpressions the printed value may be (the same tensor object, not a copy)."""
    if isinstance(e, ast.Name):
        return [e]
    if isinstance(e, ast.Unary) and e.op == "+":
        return _returned_unchanged(e.operand)
    if isinstance(e, ast.Call) and e.func == "where" and e.args[0].kind == HOST:
        return _returned_unchanged(e.args[1]) + _returned_unchanged(e.args[2])
    return []


def alias_map(checked, targets) -> dict[int, tuple[dict[str, set[str]], set[str]]] | None:
    """For each assignment (by id): which targets' tensors each name may hold just before it, and
    the hyperparameters known to be nonzero there. None if writing the targets in place could
    change a value the rule reads later."""
    may_hold = {name: {name} for name in targets}
    flat = list(_flatten(checked.body))
    before = {}
    for i, (stmt, _, guards) in enumerate(flat):
        if stmt is None:
            continue
        before[id(stmt)] = ({name: set(held) for name, held in may_hold.items()}, guards)
        if stmt.target in targets:
            later = set().union(set(), *(reads for _, reads, _ in flat[i + 1:]))
            for name, held in may_hold.items():
                if name != stmt.target and stmt.target in held and name in later:
                    return None
            continue
        # Conservative across branches: a name keeps what it may have held on another path.
        held = set(may_hold.get(stmt.target, ()))
        for e in _returned_unchanged(stmt.value):
            held |= may_hold.get(e.id, set())
        may_hold[stmt.target] = held
    return before


class InplaceAssignments:
    """Prints one assignment of the in-place reference (see the module docstring)."""

    def __init__(self, checked, printer, targets, may_hold):
        self.printer = printer
        self.targets = targets
        self.before = may_hold
        self.may_hold = {}
        self.nonzero = set()
        self.optional = {h.name for h in checked.spec.hypers
                         if not h.components and not h.is_flag and h.default == 0}

    # -- helpers -------------------------------------------------------------------------------

    def _text(self, e) -> str:
        return self.printer.expr(e)

    def _reads(self, e, target) -> bool:
        """Whether `e` may read the tensor of `target` (by its name or another that holds it)."""
        return any(n == target or target in self.may_hold.get(n, ()) for n in _names(e))

    def _optional_term(self, e):
        """`a + h * x` / `a - h * x` with `h` an optional hyperparameter: (a, op, h, x), else None."""
        if not (isinstance(e, ast.Binary) and e.op in "+-" and e.kind == ELEMENT and e.left.kind == ELEMENT):
            return None
        term = e.right
        if isinstance(term, ast.Binary) and term.op == "*":
            for h, x in ((term.left, term.right), (term.right, term.left)):
                if isinstance(h, ast.Name) and h.id in self.optional and h.id not in self.nonzero and x.kind == ELEMENT:
                    return e.left, e.op, h.id, x
        return None

    def _split(self, e):
        """A product / quotient as (sign, host numerator factors, host denominator factors,
        tensor numerator factors, tensor denominator factors)."""
        if isinstance(e, ast.Unary) and e.op == "-":
            sign, hn, hd, tn, td = self._split(e.operand)
            return -sign, hn, hd, tn, td
        if isinstance(e, ast.Binary) and e.op == "*":
            s1, hn1, hd1, tn1, td1 = self._split(e.left)
            s2, hn2, hd2, tn2, td2 = self._split(e.right)
            return s1 * s2, hn1 + hn2, hd1 + hd2, tn1 + tn2, td1 + td2
        if isinstance(e, ast.Binary) and e.op == "/":
            s1, hn1, hd1, tn1, td1 = self._split(e.left)
            if e.right.kind == HOST:
                return s1, hn1, hd1 + [e.right], tn1, td1
            return s1, hn1, hd1, tn1, td1 + [e.right]
        if (isinstance(e, ast.Binary) and e.op == "^" and isinstance(e.left, ast.Name) and e.left.kind == ELEMENT
                and isinstance(e.right, ast.Number) and e.right.value == 2):  # g^2: addcmul_(g, g)
            return 1, [], [], [e.left, e.left], []
        if e.kind == HOST:
            return 1, [e], [], [], []
        return 1, [], [], [e], []

    def _coefficient(self, sign, numerator, denominator):
        """The host coefficient as text (None for 1), with the sign folded in."""
        def product(factors):
            node = factors[0]
            for f in factors[1:]:
                node = _host(ast.Binary(node.pos, "*", node, f))
            return node
        if not numerator and not denominator:
            return None if sign > 0 else "-1"
        node = product(numerator) if numerator else _host(ast.Number(denominator[0].pos, 1.0, "1"))
        if denominator:
            node = _host(ast.Binary(node.pos, "/", node, product(denominator)))
        if sign < 0:
            node = _host(ast.Unary(node.pos, "-", node))
        return self._text(node)

    def _accumulate(self, term, op, target):
        """`.add_(x, alpha=c)`, `.sub_(x, alpha=c)`, `.addcmul_(a, b, value=c)` or
        `.addcdiv_(a, b, value=c)` adding (op "+") or subtracting `term`; None if it is no
        product of a host coefficient and one or two tensors."""
        sign, hn, hd, tn, td = self._split(term)
        if op == "-":
            sign = -sign
        if len(tn) == 1 and not td:
            if sign < 0:
                c = self._coefficient(1, hn, hd)
                return f".sub_({self._text(tn[0])}{'' if c is None else f', alpha={c}'})"
            c = self._coefficient(1, hn, hd)
            return f".add_({self._text(tn[0])}{'' if c is None else f', alpha={c}'})"
        if len(tn) == 2 and not td or len(tn) == 1 and len(td) == 1:
            method = "addcmul_" if len(tn) == 2 else "addcdiv_"
            a, b = tn if len(tn) == 2 else (tn[0], td[0])
            c = self._coefficient(sign, hn, hd)
            return f".{method}({self._text(a)}, {self._text(b)}{'' if c is None else f', value={c}'})"
        return None

    def _scaled(self, e, target):
        """`target * c` / `c * target` / `target / c` with a host `c`: the `.mul_(...)` text."""
        if isinstance(e, ast.Binary) and e.op in "*/":
            if isinstance(e.left, ast.Name) and e.left.id == target and e.right.kind == HOST:
                return f".{'mul_' if e.op == '*' else 'div_'}({self._text(e.right)})"
            if e.op == "*" and isinstance(e.right, ast.Name) and e.right.id == target and e.left.kind == HOST:
                return f".mul_({self._text(e.left)})"
        return None

    # -- statements ------------------------------------------------------------------------------

    def assign(self, stmt, indent) -> list[str]:
        self.may_hold, self.nonzero = self.before[id(stmt)]
        if stmt.target in self.targets:
            return self._assign_target(stmt.target, stmt.value, indent)
        return self._assign_local(stmt.target, stmt.value, indent)

    def _assign_local(self, name, value, indent) -> list[str]:
        split = self._optional_term(value)
        if split is not None:
            rest, op, h, x = split
            lines = [] if isinstance(rest, ast.Name) and rest.id == name else self._assign_local(name, rest, indent)
            fn = "torch.add" if op == "+" else "torch.sub"
            return lines + [f"{indent}if {h} != 0:", f"{indent}    {name} = {fn}({name}, {self._text(x)}, alpha={h})"]
        if isinstance(value, ast.Binary) and value.op in "+-" and value.kind == ELEMENT and value.left.kind == ELEMENT:
            sign, hn, hd, tn, td = self._split(value.right)
            if len(tn) == 1 and not td and (hn or hd):
                fn = "torch.add" if (value.op == "+") == (sign > 0) else "torch.sub"
                return [f"{indent}{name} = {fn}({self._text(value.left)}, {self._text(tn[0])}, "
                        f"alpha={self._coefficient(1, hn, hd)})"]
        return [f"{indent}{name} = {self._text(value)}"]

    def _assign_target(self, target, value, indent) -> list[str]:
        if isinstance(value, ast.Name) and value.id == target:
            return []
        if value.kind == HOST:
            return [f"{indent}{target}.fill_({self._text(value)})"]
        if value.kind != ELEMENT or isinstance(value, ast.Name):
            return [f"{indent}{target}.copy_({self._text(value)})"]
        split = self._optional_term(value)
        if split is not None and isinstance(split[0], ast.Name) and split[0].id == target:
            _, op, h, x = split
            return [f"{indent}if {h} != 0:",
                    f"{indent}    {target}.{'add_' if op == '+' else 'sub_'}({self._text(x)}, alpha={h})"]
        scaled = self._scaled(value, target)
        if scaled is not None:
            return [f"{indent}{target}{scaled}"]
        if isinstance(value, ast.Binary) and value.op in "+-":
            orders = [(value.left, value.right)]
            if value.op == "+":
                orders.append((value.right, value.left))
            for first, second in orders:
                if isinstance(first, ast.Name) and first.id == target:
                    # The argument is evaluated before the op writes: it may read the old value.
                    text = self._accumulate(second, value.op, target)
                    if text is not None:
                        return [f"{indent}{target}{text}"]
                scaled = self._scaled(first, target)
                if scaled is not None and not self._reads(second, target):
                    text = self._accumulate(second, value.op, target)
                    if text is not None:
                        return [f"{indent}{target}{scaled}{text}"]
        if isinstance(value, ast.Call) and value.func in ("lerp", "min", "max"):
            args = value.args
            if value.func == "lerp" and isinstance(args[0], ast.Name) and args[0].id == target and args[1].kind == ELEMENT:
                return [f"{indent}{target}.lerp_({self._text(args[1])}, {self._text(args[2])})"]
            if value.func != "lerp" and all(a.kind == ELEMENT for a in args):
                fn = "torch.maximum" if value.func == "max" else "torch.minimum"
                if any(isinstance(a, ast.Name) and a.id == target for a in args):
                    return [f"{indent}{fn}({self._text(args[0])}, {self._text(args[1])}, out={target})"]
        return [f"{indent}{target}.copy_({self._text(value)})"]


def _host(node):
    node.kind = HOST
    return node
