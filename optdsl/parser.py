"""Parse stage: `.opt` text → typed AST (`optdsl.ast`), via the Lark grammar in `grammar/`."""

from __future__ import annotations

import functools
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from . import ast
from .errors import Position, SpecError

# Deeper expressions than this are rejected before they reach recursive stages.
MAX_NESTING = 100
MAX_IMPORT_DEPTH = 16


def _grammar_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammar" / "optdsl.lark", here / "grammar" / "optdsl.lark"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("grammar/optdsl.lark not found next to the optdsl package")


@functools.lru_cache(maxsize=None)
def _lark() -> Lark:
    return Lark(
        _grammar_path().read_text(),
        parser="lalr",
        lexer="contextual",
        start=["start", "prelude"],
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _pos(item) -> Position:
    if isinstance(item, Token):
        return Position(item.line, item.column)
    meta = item.meta if hasattr(item, "meta") else item
    return Position(getattr(meta, "line", 1), getattr(meta, "column", 1))


_FRIENDLY_TOKENS = {
    "NAME": "a name", "NUMBER": "a number", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('",
    "RPAR": "')'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'", "STRING": "a quoted path",
    "DOCSTRING": 'a """docstring"""', "COMPARE_OP": "a comparison", "ADD_OP": "'+' or '-'",
    "MUL_OP": "'*' or '/'", "POW_OP": "'^'", "UNARY_OP": "'-'", "NEG": "'-'", "DTYPE": "a dtype",
    "$END": "end of file",
}


def _describe_expected(expected) -> str:
    names = sorted({_FRIENDLY_TOKENS.get(t, t.lower() if t.isupper() else repr(t)) for t in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


class _ToAst(Transformer):
    """Builds `optdsl.ast` nodes from Lark's parse tree."""

    def __init__(self, path: str, source: str):
        super().__init__(visit_tokens=False)
        self.path = path
        self.source = source

    # -- declarations -------------------------------------------------------------------------
    @v_args(meta=True)
    def start(self, meta, children):
        (name, name_pos, doc), *items = children
        hypers = [i for i in items if isinstance(i, ast.Hyper)]
        states = [i for i in items if isinstance(i, ast.State)]
        funcs = [i for i in items if isinstance(i, ast.FuncDef)]
        imports = [i for i in items if isinstance(i, ast.Import)]
        updates = [i for i in items if isinstance(i, tuple) and i[0] == "update"]
        if len(updates) > 1:
            raise SpecError("a spec has exactly one update block; this is a second one", updates[1][1])
        if not updates:
            raise SpecError(f"optimizer {name} has no `update {{ ... }}` block", name_pos)
        _, body_pos, body = updates[0]
        return ast.Spec(name, name_pos, doc, hypers, states, funcs, imports, body, body_pos, self.path, self.source)

    def prelude(self, children):
        return list(children)

    def header(self, children):
        name, doc = children
        text = ""
        if doc is not None:
            text = _dedent_doc(str(doc)[3:-3])
        return str(name), _pos(name), text

    def import_decl(self, children):
        (path,) = children
        return ast.Import(_pos(path), str(path)[1:-1])

    def hyper_decl(self, children):
        name, default, components, constraint = children
        if isinstance(default, ast.Bool):
            default = default.value
        if components is not None:
            if not isinstance(default, tuple):
                raise SpecError(f"`as (...)` destructures a tuple, but {name} defaults to {default!r}", _pos(name))
            if len(components) != len(default):
                raise SpecError(
                    f"{name} has {len(default)} components but `as` names {len(components)}", _pos(name)
                )
        elif isinstance(default, tuple):
            raise SpecError(f"tuple hyperparameter {name} needs names for its parts: `as (a, b)`", _pos(name))
        return ast.Hyper(_pos(name), str(name), default, components, constraint)

    def destructure(self, children):
        return tuple(str(c) for c in children)

    def constraint(self, children):
        return children[0]

    def tuple_literal(self, children):
        return tuple(children)

    def signed_number(self, children):
        neg, number = children
        value = float(number)
        return -value if neg is not None else value

    def state_decl(self, children):
        name, dtype, init = children
        return ast.State(_pos(name), str(name), dtype, init)

    def dtype(self, children):
        return str(children[0])

    def func_decl(self, children):
        name, *rest = children
        *params, body = rest
        params = [str(p) for p in params if p is not None]
        return ast.FuncDef(_pos(name), str(name), params, body, self.path, self.source)

    @v_args(meta=True)
    def update_block(self, meta, children):
        return ("update", _pos(meta), children[0])

    # -- statements -------------------------------------------------------------------------
    def block(self, children):
        return list(children)

    def assign(self, children):
        name, value = children
        return ast.Assign(_pos(name), str(name), value)

    @v_args(meta=True)
    def if_stmt(self, meta, children):
        cond, body, *rest = children
        branches = [(cond, body)]
        orelse: list = []
        for clause in rest:
            if clause is None:
                continue
            if clause[0] == "elif":
                branches.append((clause[1], clause[2]))
            else:
                orelse = clause[1]
        return ast.If(_pos(meta), branches, orelse)

    def elif_clause(self, children):
        return ("elif", children[0], children[1])

    def else_clause(self, children):
        return ("else", children[0])

    # -- expressions ------------------------------------------------------------------------
    def number(self, children):
        (tok,) = children
        return ast.Number(_pos(tok), float(tok), str(tok))

    def bool_literal(self, children):
        (tok,) = children
        return ast.Bool(_pos(tok), str(tok) == "true")

    def name(self, children):
        (tok,) = children
        return ast.Name(_pos(tok), str(tok))

    def call(self, children):
        name, *args = children
        args = [a for a in args if a is not None]
        return ast.Call(_pos(name), str(name), args)

    def not_op(self, children):
        tok, operand = children
        return ast.Unary(_pos(tok), "not", operand)

    def unary_op(self, children):
        tok, operand = children
        return ast.Unary(_pos(tok), str(tok), operand)

    def _left_fold(self, children):
        result = children[0]
        for op, right in zip(children[1::2], children[2::2]):
            result = ast.Binary(_pos(op), str(op), result, right)
        return result

    sum = _left_fold
    product = _left_fold

    def power(self, children):
        base, op, exponent = children
        return ast.Binary(_pos(op), "^", base, exponent)

    @v_args(meta=True)
    def or_expr(self, meta, children):
        return self._fold_logical("or", meta, children)

    @v_args(meta=True)
    def and_expr(self, meta, children):
        return self._fold_logical("and", meta, children)

    def _fold_logical(self, op, meta, children):
        result = children[0]
        for right in children[1:]:
            result = ast.Binary(result.pos, op, result, right)
        return result

    def comparison(self, children):
        operands = children[0::2]
        ops = [str(op) for op in children[1::2]]
        return ast.Compare(_pos(children[1]), ops, operands)


def _dedent_doc(text: str) -> str:
    lines = text.strip("\n").splitlines()
    indents = [len(l) - len(l.lstrip()) for l in lines[1:] if l.strip()]
    cut = min(indents, default=0)
    return "\n".join([lines[0].strip()] + [l[cut:].rstrip() for l in lines[1:]]).strip() if lines else ""


def _check_nesting(source: str) -> None:
    """Reject pathological nesting before the (recursive) tree transformer sees it."""
    depth = 0
    line, column = 1, 0
    for ch in source:
        column += 1
        if ch == "\n":
            line, column = line + 1, 0
        elif ch == "(":
            depth += 1
            if depth > MAX_NESTING:
                raise SpecError(f"parentheses nested more than {MAX_NESTING} deep", Position(line, column))
        elif ch == ")":
            depth = max(0, depth - 1)


def _check_expression_depth(node, limit: int = 4 * MAX_NESTING) -> None:
    """Long operator chains (`1+1+1+...`) build deep trees; keep them within what later stages handle."""
    stack = [(node, 1)]
    while stack:
        expr, depth = stack.pop()
        if depth > limit:
            raise SpecError(f"expression is too deeply nested (more than {limit} levels)", expr.pos)
        children = []
        if isinstance(expr, ast.Unary):
            children = [expr.operand]
        elif isinstance(expr, ast.Binary):
            children = [expr.left, expr.right]
        elif isinstance(expr, ast.Compare):
            children = expr.operands
        elif isinstance(expr, ast.Call):
            children = expr.args
        stack.extend((c, depth + 1) for c in children)


def _iter_exprs(statements):
    for stmt in statements:
        if isinstance(stmt, ast.Assign):
            yield stmt.value
        else:
            for cond, body in stmt.branches:
                yield cond
                yield from _iter_exprs(body)
            yield from _iter_exprs(stmt.orelse)


def decode(data: bytes, path: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError("file is not valid UTF-8 text", Position(line, column), path, before) from None
    if "\x00" in text:
        before = text[: text.index("\x00")]
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        raise SpecError("file contains a NUL byte; is it a binary file?", Position(line, column), path, text)
    return text


def parse_text(source: str, path: str = "<spec>", start: str = "start"):
    """Parse spec text into an `ast.Spec` (or, with start="prelude", a list of functions/imports)."""
    try:
        if not source.strip() and start == "start":
            raise SpecError("empty spec: expected `optimizer Name`", Position(1, 1))
        _check_nesting(source)
        try:
            tree = _lark().parse(source, start=start)
        except UnexpectedInput as exc:
            raise _syntax_error(exc, source) from None
        try:
            result = _ToAst(path, source).transform(tree)
        except VisitError as exc:
            if isinstance(exc.orig_exc, SpecError):
                raise exc.orig_exc from None
            raise
        if start == "start":
            exprs = list(_iter_exprs(result.body))
            exprs += [h.constraint for h in result.hypers if h.constraint is not None]
            exprs += [s.init for s in result.states] + [f.body for f in result.funcs]
        else:
            exprs = [f.body for f in result if isinstance(f, ast.FuncDef)]
        for expr in exprs:
            _check_expression_depth(expr)
        return result
    except SpecError as exc:
        raise exc.located(path, source) from None


def _syntax_error(exc: UnexpectedInput, source: str) -> SpecError:
    position = Position(getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1)
    if isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        if char == '"':
            return SpecError("unterminated string", position)
        return SpecError(f"unexpected character {char!r}", position)
    if isinstance(exc, UnexpectedEOF):
        lines = source.splitlines() or [""]
        position = Position(len(lines), len(lines[-1]) + 1)
        return SpecError(f"unexpected end of file; expected {_describe_expected(exc.expected)}", position)
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            lines = source.splitlines() or [""]
            position = Position(len(lines), len(lines[-1]) + 1)
            return SpecError(f"unexpected end of file; expected {_describe_expected(exc.expected)}", position)
        return SpecError(f"unexpected {str(token)!r}; expected {_describe_expected(exc.expected)}", position)
    return SpecError(str(exc).splitlines()[0], position)


def parse_file(path: str | Path):
    """Parse a spec file and every file it imports. Returns the `ast.Spec` with imported functions
    appended to `spec.funcs` (each keeping the path of the file it came from)."""
    path = Path(path)
    display = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror}", None, display) from None
    source = decode(data, display)
    spec = parse_text(source, display)
    imported: list[ast.FuncDef] = []
    _resolve_imports(spec.imports, path, display, source, imported, [path.resolve()])
    spec.funcs = imported + spec.funcs
    return spec


def _resolve_imports(imports, importer: Path, display: str, source: str, out: list, chain: list) -> None:
    for imp in imports:
        target = (importer.parent / imp.path).resolve()
        if target in chain:
            raise SpecError(f"import cycle: {imp.path} imports itself", imp.pos, display, source)
        if len(chain) >= MAX_IMPORT_DEPTH:
            raise SpecError("imports nested too deeply", imp.pos, display, source)
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise SpecError(f"cannot import {imp.path!r}: {exc.strerror}", imp.pos, display, source) from None
        target_display = str(importer.parent / imp.path)
        text = decode(data, target_display)
        items = parse_text(text, target_display, start="prelude")
        nested = [i for i in items if isinstance(i, ast.Import)]
        _resolve_imports(nested, target, target_display, text, out, chain + [target])
        out.extend(i for i in items if isinstance(i, ast.FuncDef) and i not in out)
