"""Check stage: name resolution, arity, assignment rules, and the kind/type of every expression.

The checker also inlines user-defined functions, so later stages see only builtins. Its result,
`CheckedSpec`, is what the IR, the reference printer and the interpreter consume.
"""

from __future__ import annotations

import copy
import keyword
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from . import ast
from .ast import COL, ELEMENT, HOST, ROW, SCALAR, UNIFORM, join_kinds
from .errors import SpecError
from .parser import MAX_EXPR_DEPTH, _expr_children

NUM, BOOL = "num", "bool"

# name -> (parameter types, result type). `where` and `fresh` are checked specially.
BUILTIN_FUNCTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "sqrt": ((NUM,), NUM),
    "rsqrt": ((NUM,), NUM),
    "exp": ((NUM,), NUM),
    "log": ((NUM,), NUM),
    "log1p": ((NUM,), NUM),
    "abs": ((NUM,), NUM),
    "sign": ((NUM,), NUM),
    "sigmoid": ((NUM,), NUM),
    "tanh": ((NUM,), NUM),
    "atan2": ((NUM, NUM), NUM),
    "min": ((NUM, NUM), NUM),
    "max": ((NUM, NUM), NUM),
    "clamp": ((NUM, NUM, NUM), NUM),
    "lerp": ((NUM, NUM, NUM), NUM),
    "where": ((BOOL, NUM, NUM), NUM),
    "fresh": ((NUM,), BOOL),
}
CONSTANTS = {"inf": float("inf"), "pi": 3.141592653589793}

# Reductions: name -> (number of arguments, the kind of the result). `max(x)` and `min(x)` with
# one argument reduce over the tensor; with two they are the elementwise builtins above.
# `cosine` takes an optional third argument, eps (default 1e-8, as F.cosine_similarity).
_PER_TENSOR = ("sum", "mean", "max", "min", "norm", "norm1", "norm_inf", "rms", "dot", "cosine")
_SEGMENTED = ("sum", "mean", "max", "min", "norm", "rms", "dot", "cosine")
REDUCTION_ARITY = {"dot": 2, "cosine": 2}
REDUCTIONS: dict[str, tuple[str, str]] = {}  # name -> (base reduction, result kind)
for _base in _PER_TENSOR:
    REDUCTIONS[_base] = (_base, UNIFORM)
for _base in _SEGMENTED:
    REDUCTIONS[f"row_{_base}"] = (_base, ROW)
    REDUCTIONS[f"col_{_base}"] = (_base, COL)
for _base in ("sum", "norm", "max"):
    REDUCTIONS[f"global_{_base}"] = (_base, "global")
# Host values describing the tensor being updated; `machine_eps` is its dtype's epsilon, as
# torch.finfo(param.dtype).eps (torch.optim.Adafactor's default eps1).
TENSOR_VALUES = ("numel", "ndim", "rows", "cols", "machine_eps")
BUILTIN_VALUES = TENSOR_VALUES + ("loss",)  # `loss`: the step's loss, one device value
BUILTIN_TENSORS = ("param", "grad")
READ_ONLY_REASONS = {
    "grad": "the gradient is read-only",
    "step": "`step` is the optimizer's step count and is read-only",
}
DTYPES = ("float16", "bfloat16", "float32", "float64")
# The language's own keywords, and names the generated module (Python, torch, Triton) uses itself.
LANGUAGE_KEYWORDS = frozenset({
    "optimizer", "import", "hyper", "state", "def", "update", "if", "elif", "else", "as", "where",
    "and", "or", "not", "true", "false", "none",
})
RESERVED_NAMES = frozenset(keyword.kwlist) | LANGUAGE_KEYWORDS | {
    "math", "os", "torch", "triton", "tl", "self", "state", "group", "h", "True", "False", "None",
    "offsets", "mask", "n_elements", "BLOCK_SIZE", "compute_dtype",
    "pid", "row_index", "col_index", "n_rows", "n_cols", "partials", "temps", "inputs", "grid",
    # the multi-tensor kernels' own names
    "DTYPES", "MASTER_WEIGHTS", "ALIGNED", "param_new", "master_param",
}

# After user functions are inlined and earlier assignments substituted (as the IR does), one
# value may have at most this many nodes, and the update, over all kernel variants (2 per `if`
# condition), at most MAX_UPDATE_NODES: SymPy and the planner walk these trees without sharing.
MAX_VALUE_NODES = 20_000
MAX_UPDATE_NODES = 100_000
# Nested checker calls (an expression level, or a call being inlined) before giving up, which
# keeps the checker itself far from Python's recursion limit.
MAX_CHECK_NESTING = MAX_EXPR_DEPTH + 20


class _TooLarge(Exception):
    """An expression outgrew the limits above (reported at the expression being checked)."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@dataclass
class CheckedSpec:
    spec: ast.Spec
    body: list  # statements with user functions inlined and every expression annotated
    hyper_scalars: dict[str, str]  # scalar name visible in the rule -> "num" | "bool"
    conditions: list[ast.Expr] = field(default_factory=list)  # every `if`/`elif` condition, in order
    uses_step: bool = False
    fresh_states: list[str] = field(default_factory=list)
    counts_steps: bool = True  # False after `state step = none`: no state["step"] is kept
    host_states: list[str] = field(default_factory=list)  # scalar states computed on the host
    uses_loss: bool = False

    @property
    def state_kinds(self) -> dict[str, str]:
        """State name -> the kind of value it holds (a scalar state is HOST or UNIFORM)."""
        kinds = {}
        for s in self.spec.states:
            if s.shape == SCALAR:
                kinds[s.name] = HOST if s.name in self.host_states else UNIFORM
            else:
                kinds[s.name] = s.shape
        return kinds

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def state_names(self) -> list[str]:
        return [s.name for s in self.spec.states]


class _DeviceScalar(Exception):
    """A scalar state assumed host-computed is assigned a device value: check again with it on the device."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


class _Checker:
    def __init__(self, spec: ast.Spec, device_scalars=frozenset()):
        self.spec = spec
        self.device_scalars = set(device_scalars)
        self.if_depth = 0
        self.uses_loss = False
        self.hyper_scalars: dict[str, str] = {}
        self.unset: set[str] = set()  # hyperparameters that default to `none`
        self.states = {s.name: s for s in spec.states}
        self.funcs: dict[str, ast.FuncDef] = {}
        self.conditions: list[ast.Expr] = []
        self.uses_step = False
        self.fresh_states: list[str] = []
        self.counts_steps = True
        self.nesting = 0  # checker calls now active (see MAX_CHECK_NESTING)
        self.shapes: dict = {}  # checked node -> its _Shape
        self.expanded: dict[str, _Shape] = {}  # assigned name -> shape of its current value

    def error(self, message, pos, func: ast.FuncDef | None = None):
        if func is not None and func.path != self.spec.path:
            return SpecError(message, pos, func.path, func.source)
        return SpecError(message, pos)

    # -- declarations -----------------------------------------------------------------------
    def declare(self):
        def reserved(name, pos, func=None):
            if name in LANGUAGE_KEYWORDS:
                raise self.error(f"{name!r} is a keyword of the language and cannot be used as a name", pos, func)
            if name in keyword.kwlist or name in ("True", "False", "None"):
                raise self.error(f"{name!r} is reserved: it is a Python keyword", pos, func)
            if name.startswith("_") or name.endswith("_ptr"):
                raise self.error(f"{name!r} is reserved: names starting with '_' or ending in '_ptr' belong to the generated code", pos, func)
            if name in RESERVED_NAMES:
                raise self.error(f"{name!r} is reserved: the generated code uses this name itself", pos, func)

        self.reserved = reserved
        reserved(self.spec.name, self.spec.name_pos)
        for func in self.spec.funcs:
            for p in func.params:
                reserved(p, func.pos, func)
        taken: dict[str, str] = {}

        def claim(name, what, pos, func=None):
            reserved(name, pos, func)
            # Reduction names stay free (torch.optim.Adagrad's state is `sum`): a call and a name
            # never meet in the same place.
            if name in BUILTIN_FUNCTIONS:
                raise self.error(f"{what} {name!r} shadows the builtin function {name}()", pos, func)
            if name in CONSTANTS or name in BUILTIN_TENSORS or name == "step" or name in BUILTIN_VALUES:
                raise self.error(f"{what} {name!r} shadows the builtin {name!r}", pos, func)
            if name in taken:
                raise self.error(f"duplicate definition of {name!r} (already a {taken[name]})", pos, func)
            taken[name] = what

        # `state step = none` opts out of the automatic state["step"] (torch.optim.SGD keeps no
        # step count); it declares no tensor, and `step` is then unavailable in the update.
        for state in [s for s in self.spec.states if s.name == "step"]:
            if not (isinstance(state.init, ast.Name) and state.init.id == "none") or state.dtype or not self.counts_steps:
                raise self.error("`step` is counted automatically; the only declaration of it is `state step = none` (keep no step count)", state.pos)
            self.counts_steps = False
            self.spec.states.remove(state)
            self.states.pop("step", None)
        for hyper in self.spec.hypers:
            claim(hyper.name, "hyperparameter", hyper.pos)
            if hyper.components:
                for component in hyper.components:
                    if component != hyper.name:
                        claim(component, "hyperparameter", hyper.pos)
            for scalar in hyper.scalar_names:
                self.hyper_scalars[scalar] = BOOL if hyper.is_flag else NUM
            for scalar in hyper.unset_names:
                claim(ast.none_flag(scalar), "hyperparameter flag", hyper.pos)
                self.hyper_scalars[ast.none_flag(scalar)] = BOOL
                self.unset.add(scalar)
        for state in self.spec.states:
            claim(state.name, "state", state.pos)
        for func in self.spec.funcs:
            claim(func.name, "function", func.pos, func)
            if len(set(func.params)) != len(func.params):
                raise self.error(f"function {func.name} repeats a parameter name", func.pos, func)
            self.funcs[func.name] = func

    def check_functions(self):
        self.check_recursion()
        for func in self.spec.funcs:
            scope = {p: (None, NUM) for p in func.params}
            self.top(func.body, scope, func=func, stack=[func.name])

    def check_recursion(self):
        """Reject functions that call themselves, directly or through others (they cannot be inlined)."""
        calls = {}
        for func in self.spec.funcs:
            found, stack = [], [func.body]
            while stack:
                e = stack.pop()
                if isinstance(e, ast.Call) and e.func in self.funcs:
                    found.append(e)
                stack.extend(_expr_children(e))
            calls[func.name] = sorted(found, key=lambda c: (c.pos.line, c.pos.column))
        done: set[str] = set()
        for root in self.spec.funcs:
            if root.name in done:
                continue
            path = [root.name]
            iters = [iter(calls[root.name])]
            while iters:
                call = next(iters[-1], None)
                if call is None:
                    done.add(path.pop())
                    iters.pop()
                    continue
                if call.func in path:
                    cycle = path[path.index(call.func):] + [call.func]
                    caller = self.funcs[path[-1]]
                    how = "itself" if len(cycle) == 2 else "itself through " + " -> ".join(cycle)
                    raise self.error(f"function {cycle[0]} calls {how} (recursion is not supported)", call.pos, caller)
                if call.func not in done:
                    path.append(call.func)
                    iters.append(iter(calls[call.func]))

    def check_hypers(self):
        for hyper in self.spec.hypers:
            if hyper.constraint is None:
                continue
            scope = {n: (HOST, t) for n, t in self.hyper_scalars.items()}
            checked = self.top(hyper.constraint, scope, allow_step=False)
            if checked.type != BOOL:
                raise self.error(f"the constraint on {hyper.name} must be a condition, e.g. `{hyper.name} >= 0`", hyper.constraint.pos)
            hyper.constraint = checked

    def check_states(self):
        for state in self.spec.states:
            if state.dtype is not None and state.dtype not in DTYPES:
                raise self.error(f"unknown dtype {state.dtype!r}", state.pos)
            if state.shape != ELEMENT and state.dtype is not None:
                raise self.error(f"a {state.shape} state is kept in the compute dtype; drop the dtype", state.pos)
            if isinstance(state.init, ast.Name) and state.init.id == "param":
                if state.shape != ELEMENT:
                    raise self.error(f"a {state.shape} state cannot start as `param`; start it from a constant", state.init.pos)
                state.init.kind, state.init.type = ELEMENT, NUM
                continue
            scope = {n: (HOST, t) for n, t in self.hyper_scalars.items()}
            try:
                state.init = self.top(state.init, scope, allow_step=False)
            except SpecError as exc:
                hint = "a state starts as `param` or as a constant built from hyperparameters"
                if isinstance(state.init, ast.Name) and state.init.id == "none":
                    hint = "only `state step = none` may use `none`"
                raise SpecError(f"{exc.message}; {hint}", exc.position, exc.path, exc.source) from None
            if state.init.type != NUM:
                raise self.error(f"state {state.name} must start as a number, not a condition", state.init.pos)

    # -- update body ------------------------------------------------------------------------
    def check_body(self):
        scope: dict[str, tuple] = {n: (HOST, t) for n, t in self.hyper_scalars.items()}
        scope.update({n: (ELEMENT, NUM) for n in BUILTIN_TENSORS})
        for name, state in self.states.items():
            if state.shape == SCALAR:
                scope[name] = (UNIFORM if name in self.device_scalars else HOST, NUM)
            else:
                scope[name] = (state.shape, NUM)
        scope.update({n: (HOST, NUM) for n in TENSOR_VALUES})
        scope["loss"] = (UNIFORM, NUM)
        if self.counts_steps:
            scope["step"] = (HOST, NUM)
        self.locals_used: set[str] = set()
        self.local_defs: dict[str, ast.Assign] = {}
        body = self.block(self.spec.body, scope)
        unused = [a for name, a in self.local_defs.items() if name not in self.locals_used]
        if unused:
            first = min(unused, key=lambda a: (a.pos.line, a.pos.column))
            raise self.error(
                f"{first.target!r} is assigned but never used (a typo for a state or `param`?)", first.pos
            )
        if not any(self._assigns(body, "param")):
            raise self.error("the update never assigns `param`", self.spec.body_pos)
        outputs = ["param"] + [s for s in self.states if any(self._assigns(body, s))]
        variants = 2 ** len(self.conditions)
        total = variants * sum(self.expanded.get(name, _LEAF).nodes for name in outputs)
        if total > MAX_UPDATE_NODES:
            raise self.error(
                f"the update is too large to compile: {total} expression nodes over {variants} kernel "
                f"variant{'s' if variants > 1 else ''} once functions are inlined and assignments "
                f"substituted (at most {MAX_UPDATE_NODES}); use fewer `if`s or a smaller rule",
                self.spec.body_pos,
            )
        return body

    def _assigns(self, body, target):
        for stmt in body:
            if isinstance(stmt, ast.Assign) and stmt.target == target:
                yield stmt
            elif isinstance(stmt, ast.If):
                for _, branch in stmt.branches:
                    yield from self._assigns(branch, target)
                yield from self._assigns(stmt.orelse, target)

    def block(self, statements, scope):
        out = []
        for stmt in statements:
            if isinstance(stmt, ast.Assign):
                out.append(self.assign(stmt, scope))
            else:
                out.append(self.if_stmt(stmt, scope))
        return out

    def assign(self, stmt: ast.Assign, scope):
        target = stmt.target
        if target in READ_ONLY_REASONS:
            raise self.error(f"cannot assign to {target!r}: {READ_ONLY_REASONS[target]}", stmt.pos)
        if target in self.hyper_scalars:
            raise self.error(f"cannot assign to hyperparameter {target!r}; bind a new name instead", stmt.pos)
        if target in self.funcs or target in BUILTIN_FUNCTIONS:
            raise self.error(f"cannot assign to function {target!r}", stmt.pos)
        if target in CONSTANTS:
            raise self.error(f"cannot assign to the constant {target!r}", stmt.pos)
        self.reserved(target, stmt.pos)
        value = self.top(stmt.value, scope)
        if value.type != NUM and (target in self.states or target == "param"):
            raise self.error(f"{target} must be a number; this is a condition (use where(c, a, b))", stmt.value.pos)
        kind = value.kind
        if target in self.states and self.states[target].shape != ELEMENT:
            kind = self.state_kind(self.states[target], value)
        elif target in self.states or target == "param":
            kind = ELEMENT  # tensors stay tensors even when assigned a scalar
        elif target not in self.local_defs:
            self.local_defs[target] = stmt
        scope[target] = (kind, value.type)
        self.expanded[target] = self.shapes.get(value, _LEAF)._replace(depth=1)
        return ast.Assign(stmt.pos, target, value)

    def state_kind(self, state: ast.State, value: ast.Expr) -> str:
        """The kind a row, column or scalar state keeps when assigned `value`."""
        if state.shape == SCALAR:
            if value.kind == HOST:
                return UNIFORM if state.name in self.device_scalars else HOST
            if value.kind == UNIFORM:
                if state.name not in self.device_scalars:
                    raise _DeviceScalar(state.name)
                return UNIFORM
            raise self.error(
                f"scalar state {state.name} holds one value per tensor, but this value differs per "
                f"{'element' if value.kind == ELEMENT else value.kind}; reduce it (sum, mean, norm, ...)", value.pos)
        if value.kind in (HOST, UNIFORM, state.shape):
            return state.shape
        other = {ROW: "row_", COL: "col_"}[state.shape]
        raise self.error(
            f"{state.shape} state {state.name} holds one value per {state.shape}, but this value differs per "
            f"{'element' if value.kind == ELEMENT else value.kind}; reduce it with {other}sum, {other}mean, ...",
            value.pos)

    def if_stmt(self, stmt: ast.If, scope):
        branches = []
        branch_scopes = []
        before = dict(self.expanded)
        expanded = dict(self.expanded)
        for cond, body in stmt.branches:
            checked = self.top(cond, scope)
            if checked.type != BOOL:
                raise self.error("an `if` needs a condition (a comparison, a flag, and/or/not)", cond.pos)
            if checked.kind != HOST:
                raise self.error(
                    "an `if` condition must not depend on tensor values (it selects a kernel); "
                    "use where(condition, a, b) for per-element choices",
                    cond.pos,
                )
            self.conditions.append(checked)
            from .ir import MAX_CONDITIONS  # here: ir imports this module

            if len(self.conditions) > MAX_CONDITIONS:
                raise self.error(
                    f"too many `if` conditions (more than {MAX_CONDITIONS}): each doubles the kernel variants",
                    cond.pos,
                )
            inner = dict(scope)
            self.expanded = dict(before)
            self.if_depth += 1
            branches.append((checked, self.block(body, inner)))
            self.if_depth -= 1
            branch_scopes.append(inner)
            expanded = _merge_shapes(expanded, self.expanded)
        inner = dict(scope)
        self.expanded = dict(before)
        self.if_depth += 1
        orelse = self.block(stmt.orelse, inner)
        self.if_depth -= 1
        branch_scopes.append(inner)
        self.expanded = _merge_shapes(expanded, self.expanded)
        # A name is defined after the `if` only when every branch defines it.
        for name in set.intersection(*(set(s) for s in branch_scopes)):
            kinds = {s[name][0] for s in branch_scopes}
            if len({s[name][1] for s in branch_scopes}) > 1:
                raise self.error(
                    f"{name!r} is a condition on one path through this `if` and a number on another",
                    stmt.pos)
            # Keep the name's type: flags (BOOL hyperparameters) stay conditions after an `if`;
            # forcing NUM here broke `if flag` following any earlier `if`.
            scope[name] = (join_kinds(*kinds), branch_scopes[0][name][1])
        for name in set.union(*(set(s) for s in branch_scopes)) - set(scope):
            self.maybe_defined = getattr(self, "maybe_defined", set()) | {name}
        return ast.If(stmt.pos, branches, orelse)

    # -- expressions ------------------------------------------------------------------------
    def top(self, e: ast.Expr, scope, func: ast.FuncDef | None = None, stack=(), allow_step=True) -> ast.Expr:
        """Check one whole expression (a value, condition, constraint, init or function body)."""
        try:
            return self.expr(e, scope, func, stack, allow_step)
        except _TooLarge as exc:
            raise self.error(exc.what, e.pos, func) from None

    def expr(self, e: ast.Expr, scope, func: ast.FuncDef | None = None, stack=(), allow_step=True) -> ast.Expr:
        """Return a checked copy of `e` with user functions inlined and kind/type set."""
        if isinstance(e, _Bound):
            return e.expr
        self.nesting += 1
        try:
            if self.nesting > MAX_CHECK_NESTING:
                raise _TooLarge(
                    f"expression is nested too deeply once functions are inlined (more than {MAX_CHECK_NESTING} levels)"
                )
            out = self._expr(e, scope, func, stack, allow_step)
        finally:
            self.nesting -= 1
        if out not in self.shapes:
            shape = _shape(out, [self.shapes.get(c, _LEAF) for c in _expr_children(out)])
            if shape.depth > MAX_EXPR_DEPTH:
                raise _TooLarge(
                    f"expression is nested too deeply once functions are inlined ({shape.depth} levels; "
                    f"at most {MAX_EXPR_DEPTH})"
                )
            if shape.expanded_depth > MAX_EXPR_DEPTH:
                raise _TooLarge(
                    f"value is nested too deeply once earlier assignments are substituted into it "
                    f"({shape.expanded_depth} levels; at most {MAX_EXPR_DEPTH}): the compiler builds each "
                    "new value of `param` and of the states as one expression"
                )
            if shape.nodes > MAX_VALUE_NODES:
                raise _TooLarge(
                    f"value is too large once functions are inlined and earlier assignments substituted "
                    f"into it ({shape.nodes} nodes; at most {MAX_VALUE_NODES})"
                )
            self.shapes[out] = shape
        return out

    def _expr(self, e: ast.Expr, scope, func, stack, allow_step) -> ast.Expr:
        if isinstance(e, ast.Number):
            out = ast.Number(e.pos, e.value, e.text)
            out.kind, out.type = HOST, NUM
            return out
        if isinstance(e, ast.Bool):
            out = ast.Bool(e.pos, e.value)
            out.kind, out.type = HOST, BOOL
            return out
        if isinstance(e, ast.Name):
            return self.name(e, scope, func, allow_step)
        if isinstance(e, ast.Unary):
            operand = self.expr(e.operand, scope, func, stack, allow_step)
            want = BOOL if e.op == "not" else NUM
            if operand.type != want:
                raise self.error(_type_message(e.op, want, operand), e.operand.pos, func)
            out = ast.Unary(e.pos, e.op, operand)
            out.kind, out.type = operand.kind, want
            return out
        if isinstance(e, ast.Binary):
            left = self.expr(e.left, scope, func, stack, allow_step)
            right = self.expr(e.right, scope, func, stack, allow_step)
            want = BOOL if e.op in ("and", "or") else NUM
            for side, node in ((left, e.left), (right, e.right)):
                if side.type != want:
                    raise self.error(_type_message(e.op, want, side), node.pos, func)
            out = ast.Binary(e.pos, e.op, left, right)
            out.kind, out.type = _join(left, right), want
            return out
        if isinstance(e, ast.Compare):
            if any(isinstance(o, ast.Name) and o.id == "none" for o in e.operands):
                return self.none_test(e, scope, func)
            operands = [self.expr(o, scope, func, stack, allow_step) for o in e.operands]
            for operand, node in zip(operands, e.operands):
                if operand.type != NUM:
                    raise self.error(f"cannot compare a condition with {e.ops[0]!r}", node.pos, func)
            out = ast.Compare(e.pos, list(e.ops), operands)
            out.kind, out.type = _join(*operands), BOOL
            return out
        if isinstance(e, ast.Call):
            return self.call(e, scope, func, stack, allow_step)
        raise TypeError(f"unknown expression node {e!r}")

    def none_test(self, e: ast.Compare, scope, func) -> ast.Expr:
        """`x == none` / `x != none` for a hyperparameter that defaults to `none`: a host flag."""
        subject = e.operands[0] if not (isinstance(e.operands[0], ast.Name) and e.operands[0].id == "none") \
            else e.operands[-1]
        if len(e.ops) != 1 or e.ops[0] not in ("==", "!=") or not isinstance(subject, ast.Name) \
                or subject.id not in self.unset or subject.id not in scope:
            raise self.error("only a hyperparameter that defaults to `none` can be compared with none, "
                             "as `x == none` or `x != none`", subject.pos, func)
        flag = ast.Name(e.pos, ast.none_flag(subject.id))
        flag.kind, flag.type = HOST, BOOL
        if e.ops[0] == "==":
            return flag
        out = ast.Unary(e.pos, "not", flag)
        out.kind, out.type = HOST, BOOL
        return out

    def name(self, e: ast.Name, scope, func, allow_step):
        ident = e.id
        out = ast.Name(e.pos, ident)
        if ident in CONSTANTS:
            out.kind, out.type = HOST, NUM
            return out
        if ident in scope:
            kind, typ = scope[ident]
            if ident == "step":
                if not allow_step:
                    raise self.error("`step` is not available here (only inside `update`)", e.pos, func)
                self.uses_step = True
            if kind is None:  # a function parameter: substituted when the call is inlined
                out.type = typ
                return out
            if hasattr(self, "locals_used"):
                self.locals_used.add(ident)
            if ident == "loss":
                self.uses_loss = True
            out.kind, out.type = kind, typ
            if ident in self.expanded:
                self.shapes[out] = self.expanded[ident]  # the IR substitutes the assigned value here
            return out
        if ident in getattr(self, "maybe_defined", set()):
            raise self.error(f"{ident!r} is not assigned on every path through the `if` above", e.pos, func)
        if ident in self.funcs or ident in BUILTIN_FUNCTIONS:
            raise self.error(f"{ident!r} is a function; call it as {ident}(...)", e.pos, func)
        if func is not None:
            raise self.error(f"undefined name {ident!r} in function {func.name} (functions see only their parameters)", e.pos, func)
        if ident == "step" and not self.counts_steps:
            raise self.error("this spec keeps no step count (`state step = none`), so `step` is not available", e.pos, func)
        if ident in self.states or ident in BUILTIN_TENSORS or ident == "step":
            raise self.error(f"{ident!r} is not available here", e.pos, func)
        if ident == "none":
            raise self.error("`none` is not a value; test a hyperparameter that defaults to it with `x == none`",
                             e.pos, func)
        raise self.error(f"undefined name {ident!r}", e.pos, func)

    def call(self, e: ast.Call, scope, func, stack, allow_step):
        if e.func == "fresh":
            if func is not None:
                raise self.error("fresh() is only available in the update block", e.pos, func)
            if len(e.args) != 1 or not isinstance(e.args[0], ast.Name) or e.args[0].id not in self.states:
                raise self.error("fresh() takes one state name: fresh(momentum_buffer)", e.pos)
            state = e.args[0].id
            if state not in self.fresh_states:
                self.fresh_states.append(state)
            arg = ast.Name(e.args[0].pos, state)
            arg.kind, arg.type = ELEMENT, NUM
            out = ast.Call(e.pos, "fresh", [arg])
            out.kind, out.type = HOST, BOOL
            return out
        if e.func in REDUCTIONS and not (e.func in ("max", "min") and len(e.args) == 2):
            return self.reduction(e, scope, func, stack, allow_step)
        if e.func in BUILTIN_FUNCTIONS:
            params, result = BUILTIN_FUNCTIONS[e.func]
            if len(e.args) != len(params):
                raise self.error(_arity_message(e.func, len(params), len(e.args)), e.pos, func)
            args = [self.expr(a, scope, func, stack, allow_step) for a in e.args]
            for arg, want, node in zip(args, params, e.args):
                if arg.type is not None and arg.type != want:
                    raise self.error(f"{e.func}() expects a {'condition' if want == BOOL else 'number'} here", node.pos, func)
            out = ast.Call(e.pos, e.func, args)
            out.kind, out.type = _join(*args), result
            return out
        if e.func in self.funcs:
            callee = self.funcs[e.func]
            if callee.name in stack:
                raise self.error(f"function {callee.name} calls itself (recursion is not supported)", e.pos, func)
            if len(e.args) != len(callee.params):
                raise self.error(_arity_message(e.func, len(callee.params), len(e.args)), e.pos, func)
            args = [self.expr(a, scope, func, stack, allow_step) for a in e.args]
            for arg, node in zip(args, e.args):
                if arg.type == BOOL:
                    raise self.error(f"{e.func}() takes numbers; this argument is a condition", node.pos, func)
            if func is not None:  # checking a definition: parameters stay symbolic
                out = ast.Call(e.pos, e.func, args)
                out.type = NUM
                return out
            return self.inline(callee, args, stack)
        if e.func in scope or e.func in CONSTANTS:
            raise self.error(f"{e.func!r} is not a function", e.pos, func)
        raise self.error(f"unknown function {e.func!r}", e.pos, func)

    def reduction(self, e: ast.Call, scope, func, stack, allow_step):
        base, result = REDUCTIONS[e.func]
        arity = REDUCTION_ARITY.get(base, 1)
        if e.func in ("max", "min") and len(e.args) != 1:
            raise self.error(f"{e.func}() takes 1 argument (the largest value of a tensor) or 2 (elementwise), "
                             f"got {len(e.args)}", e.pos, func)
        if not (len(e.args) == arity or (base == "cosine" and len(e.args) == 3)):
            raise self.error(_arity_message(e.func, arity, len(e.args)) + (" (or 3: x, y, eps)" if base == "cosine" else ""),
                             e.pos, func)
        args = [self.expr(a, scope, func, stack, allow_step) for a in e.args]
        for arg, node in zip(args, e.args):
            if arg.type == BOOL:
                raise self.error(f"{e.func}() reduces numbers; this argument is a condition", node.pos, func)
        if base == "cosine" and len(args) == 3 and args[2].kind not in (HOST, None):
            raise self.error("cosine()'s eps must not depend on tensor values", e.args[2].pos, func)
        reduced = join_kinds(*(a.kind for a in args[:arity] if a.kind is not None))
        if func is None:
            if result in (ROW, COL, "global") and reduced != ELEMENT:
                raise self.error(f"{e.func}() needs a value that differs per element; this one is "
                                 f"{_kind_words(reduced)}", e.pos, func)
            if result == UNIFORM and reduced in (HOST, UNIFORM):
                raise self.error(f"{e.func}() has nothing to reduce: its argument is {_kind_words(reduced)}", e.pos, func)
            if result == "global" and self.if_depth:
                raise self.error(f"{e.func}() reduces over every parameter, so it must not sit inside an `if` "
                                 "(compute it before the first `if`)", e.pos, func)
        out = ast.Call(e.pos, e.func, args)
        out.kind, out.type = (UNIFORM if result == "global" else result), NUM
        return out

    def inline(self, callee: ast.FuncDef, args, stack):
        """Substitute checked arguments into the callee's body and check the result."""
        bindings = dict(zip(callee.params, args))
        return self.expr(_substitute(callee.body, bindings), {}, None, list(stack) + [callee.name])


def _substitute(e: ast.Expr, bindings: dict) -> ast.Expr:
    if isinstance(e, ast.Name) and e.id in bindings:
        return _Bound(bindings[e.id])
    if isinstance(e, ast.Unary):
        return ast.Unary(e.pos, e.op, _substitute(e.operand, bindings))
    if isinstance(e, ast.Binary):
        return ast.Binary(e.pos, e.op, _substitute(e.left, bindings), _substitute(e.right, bindings))
    if isinstance(e, ast.Compare):
        return ast.Compare(e.pos, list(e.ops), [_substitute(o, bindings) for o in e.operands])
    if isinstance(e, ast.Call):
        return ast.Call(e.pos, e.func, [_substitute(a, bindings) for a in e.args])
    return copy.copy(e)


class _Bound(ast.Expr):
    """An already-checked argument spliced into an inlined function body."""

    def __init__(self, expr: ast.Expr):
        super().__init__(expr.pos)
        self.expr = expr


class _Shape(NamedTuple):
    """Size of a checked expression, as the later stages see it.

    `depth`: levels of the checked tree itself (walked recursively by the IR and the reference
    printer). `nodes` and `expanded_depth`: the tree with earlier assignments substituted for the
    names that hold them, which is what SymPy builds; chains of + and -, of * and /, and of
    `and` / `or` count as one level there, since SymPy flattens them.
    """

    nodes: int
    depth: int
    expanded_depth: int
    chain: Optional[str]  # "+", "*", "and", "or": the flattened operator at the root, if any


_LEAF = _Shape(1, 1, 1, None)
_CHAINS = {"+": "+", "-": "+", "*": "*", "/": "*", "and": "and", "or": "or"}


def _shape(node, children: list) -> _Shape:
    chain = _CHAINS.get(node.op) if isinstance(node, ast.Binary) else None
    levels = []
    for index, child in enumerate(children):
        if chain == "*" and node.op == "/" and index == 1:
            levels.append(child.expanded_depth + 1)  # a / b is a * b^-1
        elif chain is not None and child.chain == chain:
            levels.append(child.expanded_depth - 1)  # flattened into this node's operands
        else:
            levels.append(child.expanded_depth)
    return _Shape(
        nodes=1 + sum(c.nodes for c in children),
        depth=1 + max((c.depth for c in children), default=0),
        expanded_depth=1 + max(levels, default=0),
        chain=chain,
    )


def _merge_shapes(a: dict, b: dict) -> dict:
    """Names assigned on several paths: the largest of their shapes."""
    merged = dict(a)
    for name, shape in b.items():
        old = merged.get(name, _LEAF)
        merged[name] = _Shape(
            max(old.nodes, shape.nodes), 1, max(old.expanded_depth, shape.expanded_depth),
            old.chain if old.chain == shape.chain else None,
        )
    return merged


def _join(*exprs) -> str:
    return join_kinds(*(x.kind for x in exprs))


def _kind_words(kind) -> str:
    return {HOST: "a host number", UNIFORM: "one value per tensor", ROW: "one value per row",
            COL: "one value per column", ELEMENT: "per element"}[kind]


def _type_message(op, want, got) -> str:
    if want == NUM:
        return f"{op!r} needs numbers, but this is a condition"
    return f"{op!r} needs conditions, but this is a number (compare it, e.g. `x > 0`)"


def _arity_message(name, want, got) -> str:
    s = "" if want == 1 else "s"
    return f"{name}() takes {want} argument{s}, got {got}"


def check(spec: ast.Spec) -> CheckedSpec:
    """Check a parsed spec; raise `SpecError` (located in the spec file) on the first problem."""
    # A scalar state lives on the host unless a device value (a reduction, `loss`) flows into it;
    # each such discovery restarts the check on a fresh copy (declare() edits the spec).
    device_scalars: set[str] = set()
    original = spec
    while True:
        spec = copy.deepcopy(original)
        try:
            checker = _Checker(spec, device_scalars)
            checker.declare()
            checker.check_functions()
            checker.check_hypers()
            checker.check_states()
            body = checker.check_body()
        except _DeviceScalar as exc:
            device_scalars.add(exc.name)
            continue
        except SpecError as exc:
            raise exc.located(spec.path, spec.source) from None
        host_states = [s.name for s in spec.states if s.shape == SCALAR and s.name not in device_scalars]
        return CheckedSpec(spec, body, checker.hyper_scalars, checker.conditions, checker.uses_step, checker.fresh_states,
                           checker.counts_steps, host_states, checker.uses_loss)
