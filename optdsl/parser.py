"""Parse stage: `.opt` text → typed AST (`optdsl.ast`), via the Lark grammar in `grammar/`.

Every problem is a `SpecError` with a position. The parse itself (LALR) and the tree-to-AST
transform are iterative, and sizes and nesting are bounded here, so no input (binary junk,
megabyte files, thousands of nested parentheses) can make a later, recursive stage fail.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

from lark import Lark, Token, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.visitors import Transformer_NonRecursive

from . import ast
from .errors import Position, SpecError

# Limits on what a spec may contain. Real specs are a few kilobytes with expressions a dozen
# levels deep; these bounds keep every later stage (the recursive checker, SymPy, the printers)
# well inside Python's recursion limit and keep compile times short.
MAX_SOURCE_CHARS = 100_000
MAX_NAME_CHARS = 100
MAX_EXPR_DEPTH = 100  # operators/calls/parentheses nested in one expression (a chain a+b+c counts each +)
MAX_BLOCK_DEPTH = 16  # `if` blocks nested inside each other
MAX_IMPORT_DEPTH = 16


def _grammar_path() -> Path:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "grammar" / "optdsl.lark", here / "grammar" / "optdsl.lark"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("grammar/optdsl.lark not found next to the optdsl package")


def _clip(text: str, limit: int = 40) -> str:
    """`text` for quoting in a message, shortened in the middle when long."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...{text[-(limit // 2 - 3):]} ({len(text)} characters)"


def _check_name(token: Token) -> Token:
    if len(token) > MAX_NAME_CHARS:
        raise SpecError(f"name is too long ({len(token)} characters; at most {MAX_NAME_CHARS})", _pos(token))
    return token


def _check_number(token: Token) -> Token:
    value = float(token)
    if math.isinf(value):
        raise SpecError(
            f"number {_clip(token)} is too large: it overflows to infinity (write `inf` if you mean it)", _pos(token)
        )
    mantissa = re.split("[eE]", str(token))[0]
    if value == 0.0 and any(c in "123456789" for c in mantissa):
        raise SpecError(f"number {_clip(token)} is too small: it rounds to 0", _pos(token))
    return token


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


@functools.lru_cache(maxsize=None)
def _loss_lark() -> Lark:
    """The parser for `loss` specs: the same grammar from the start symbol `loss_spec`. A
    separate table, because LALR would otherwise merge the loss items' keywords into what may
    follow an expression in optimizer specs (an optimizer local named `value` would break)."""
    return Lark(
        _grammar_path().read_text(),
        parser="lalr",
        lexer="contextual",
        start="loss_spec",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def is_loss_text(text: str) -> bool:
    """Whether spec text is a loss rule: its first token, after blanks and comments, is `loss`."""
    i = 0
    while i < len(text):  # a loop: a regex here could backtrack badly on long runs of blanks
        if text[i].isspace():
            i += 1
        elif text[i] == "#":
            end = text.find("\n", i)
            i = len(text) if end < 0 else end
        else:
            break
    return re.match(r"loss\b", text[i:i + 5]) is not None


def _pos(item) -> Position:
    if isinstance(item, Token):
        return Position(item.line or 1, item.column or 1)
    meta = item.meta if hasattr(item, "meta") else item
    return Position(getattr(meta, "line", 1), getattr(meta, "column", 1))


class _ToAst(Transformer_NonRecursive):
    """Builds `optdsl.ast` nodes from Lark's parse tree (without recursion, so depth is no issue)."""

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
            first = updates[0][1]
            raise SpecError(
                f"a spec has exactly one update block; this is a second one (the first is on line {first.line})",
                updates[1][1],
            )
        if not updates:
            raise SpecError(f"optimizer {name} has no `update {{ ... }}` block", name_pos)
        _, body_pos, body = updates[0]
        return ast.Spec(name, name_pos, doc, hypers, states, funcs, imports, body, body_pos, self.path, self.source)

    def prelude(self, children):
        return list(children)

    # -- loss rules ---------------------------------------------------------------------------
    def loss_spec(self, children):
        (name, name_pos, doc), *items = children
        hypers = [i for i in items if isinstance(i, ast.Hyper)]
        funcs = [i for i in items if isinstance(i, ast.FuncDef)]
        imports = [i for i in items if isinstance(i, ast.Import)]
        inputs = [i for i in items if isinstance(i, ast.LossInput)]
        reductions = [i for i in items if isinstance(i, tuple) and i[0] == "reduction"]
        values = [i for i in items if isinstance(i, tuple) and i[0] == "value"]
        if len(reductions) > 1:
            raise SpecError("a loss declares its default `reduction` once; this is a second one", reductions[1][1])
        if len(values) > 1:
            raise SpecError(
                f"a loss has exactly one value block; this is a second one (the first is on line {values[0][1].line})",
                values[1][1],
            )
        if not values:
            raise SpecError(f"loss {name} has no `value {{ ... }}` block", name_pos)
        order = []
        for item in items:
            if isinstance(item, ast.LossInput):
                order.append(("input", item.name))
            elif isinstance(item, ast.Hyper):
                order.append(("hyper", item.name))
            elif isinstance(item, tuple) and item[0] == "reduction":
                order.append(("reduction", "reduction"))
        reduction, reduction_pos = (reductions[0][2], reductions[0][1]) if reductions else (None, None)
        _, body_pos, body = values[0]
        return ast.LossSpec(name, name_pos, doc, hypers, funcs, imports, inputs, reduction, reduction_pos, order,
                            body, body_pos, self.path, self.source)

    def loss_header(self, children):
        return self.header(children)

    def input_decl(self, children):
        name, role, default, differentiable = children
        default = float(default) if default is not None else None  # a fill value, always a float
        return ast.LossInput(_pos(name), str(name), str(role), _pos(role), default, differentiable is not None)

    def reduction_decl(self, children):
        (text,) = children
        return ("reduction", _pos(text), str(text)[1:-1])

    @v_args(meta=True)
    def value_block(self, meta, children):
        return ("value", _pos(meta), children[0])

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

    def none_literal(self, children):
        return None

    def signed_number(self, children):
        # `0` stays an int and `0.0` a float, so a default reads as written (torch's repr).
        neg, number = children
        value = int(number) if str(number).isdigit() else float(number)
        return -value if neg is not None else value

    def state_decl(self, children):
        name, state_type, init = children
        shape, dtype = state_type if state_type is not None else (ast.ELEMENT, None)
        return ast.State(_pos(name), str(name), dtype, init, shape)

    def state_type(self, children):
        if len(children) == 1 and children[0].type == "DTYPE":
            return ast.ELEMENT, str(children[0])
        shape, dtype = children
        return str(shape), (str(dtype) if dtype is not None else None)

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


# -- limits ------------------------------------------------------------------------------------


def _position_of(source: str, index: int) -> Position:
    line = source.count("\n", 0, index) + 1
    return Position(line, index - (source.rfind("\n", 0, index) + 1) + 1)


def _check_size(source: str) -> None:
    if len(source) > MAX_SOURCE_CHARS:
        raise SpecError(
            f"spec is too large ({len(source)} characters; at most {MAX_SOURCE_CHARS})",
            _position_of(source, MAX_SOURCE_CHARS),
        )


def _check_tokens(tree) -> None:
    """Names and number literals, checked without recursion (Tree.scan_values recurses)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, Tree):
            stack.extend(reversed(node.children))
        elif isinstance(node, Token):
            if node.type == "NAME":
                _check_name(node)
            elif node.type == "NUMBER":
                _check_number(node)


def _expr_children(expr) -> list:
    if isinstance(expr, ast.Unary):
        return [expr.operand]
    if isinstance(expr, ast.Binary):
        return [expr.left, expr.right]
    if isinstance(expr, ast.Compare):
        return list(expr.operands)
    if isinstance(expr, ast.Call):
        return list(expr.args)
    return []


def _check_expression_depth(node) -> None:
    """Nested parentheses, calls and long operator chains (`1+1+1+...`) build deep trees, which
    every later stage walks recursively; keep them within a depth those stages handle."""
    stack = [(node, 1)]
    while stack:
        expr, depth = stack.pop()
        if depth > MAX_EXPR_DEPTH:
            raise SpecError(
                f"expression is nested too deeply (more than {MAX_EXPR_DEPTH} levels of operators, calls "
                "and parentheses); split it into several assignments",
                expr.pos,
            )
        stack.extend((c, depth + 1) for c in _expr_children(expr))


def _check_block_depth(statements) -> None:
    stack = [(statements, 0)]
    while stack:
        body, depth = stack.pop()
        for stmt in body:
            if isinstance(stmt, ast.If):
                if depth + 1 > MAX_BLOCK_DEPTH:
                    raise SpecError(f"`if` blocks are nested more than {MAX_BLOCK_DEPTH} deep", stmt.pos)
                stack.extend((branch, depth + 1) for _, branch in stmt.branches)
                stack.append((stmt.orelse, depth + 1))


def _iter_exprs(statements):
    stack = list(reversed(statements))
    while stack:
        stmt = stack.pop()
        if isinstance(stmt, ast.Assign):
            yield stmt.value
        else:
            for cond, body in stmt.branches:
                yield cond
            for _, body in stmt.branches:
                stack.extend(reversed(body))
            stack.extend(reversed(stmt.orelse))


# -- text --------------------------------------------------------------------------------------


def decode(data: bytes, path: str) -> str:
    """Spec bytes → text: UTF-8 (a leading byte-order mark is dropped), with \\r\\n and \\r
    line endings read as \\n. Binary files are rejected with the position of the first bad byte."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
        position = _position_of(before, len(before))
        bad = data[exc.start : exc.start + 1].hex()
        raise SpecError(
            f"file is not valid UTF-8 text (byte 0x{bad} at offset {exc.start}); is it a binary file?", position, path, before
        ) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        index = text.index("\x00")
        raise SpecError("file contains a NUL byte; is it a binary file?", _position_of(text, index), path, text)
    return text


def parse_text(source: str, path: str = "<spec>", start: str = "start"):
    """Parse spec text into an `ast.Spec` (or, with start="prelude", a list of functions/imports)."""
    try:
        _check_size(source)
        if start == "start" and not _has_tokens(source):
            raise SpecError("empty spec: a spec starts with `optimizer Name` (or `loss Name`)", Position(1, 1))
        try:
            if start == "start" and is_loss_text(source):
                tree = _loss_lark().parse(source)
            else:
                tree = _lark().parse(source, start=start)
        except UnexpectedInput as exc:
            raise _syntax_error(exc, source, start) from None
        _check_tokens(tree)
        try:
            result = _ToAst(path, source).transform(tree)
        except VisitError as exc:
            if isinstance(exc.orig_exc, SpecError):
                raise exc.orig_exc from None
            raise
        if start == "start":
            _check_block_depth(result.body)
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


# -- syntax errors -----------------------------------------------------------------------------

_COMMENT_OR_SPACE = re.compile(r"(\s+|#[^\n]*)*\Z")

# How expected terminals are named in messages, in the order they are listed.
_EXPECTED_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "NEG": "'-'", "STRING": 'a quoted path like "file.opt"',
    "DOCSTRING": 'a """docstring"""', "DTYPE": "a dtype (float16, bfloat16, float32 or float64)",
    "SHAPE": "a state shape (row, col or scalar)",
    "COMPARE_OP": "a comparison", "ADD_OP": "'+' or '-'", "MUL_OP": "'*' or '/'", "POW_OP": "'^'",
    "UNARY_OP": "'-'", "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "COMMA": "','",
    "EQUAL": "'='", "COLON": "':'",
}
_KEYWORDS = ("optimizer", "import", "hyper", "state", "def", "update", "if", "elif", "else", "as", "where",
             "and", "or", "not", "true", "false", "input", "reduction", "value", "differentiable")
_EXPR_START = {"NAME", "NUMBER", "LPAR", "UNARY_OP", "NOT", "TRUE", "FALSE"}
_OPERATORS = {"ADD_OP", "MUL_OP", "POW_OP", "COMPARE_OP", "AND", "OR"}
_CHARACTER_HINTS = {
    ";": "statements need no separator; remove the ';'",
    "&": "write `and`",
    "|": "write `or`",
    "!": "write `not` (and `!=` for 'not equal')",
    "%": "there is no '%' operator",
    "[": "there is no indexing: every name is a scalar or a whole tensor",
    "]": "there is no indexing: every name is a scalar or a whole tensor",
    "'": 'paths are written in double quotes: import "file.opt"',
    "\t": "",
}


def _has_tokens(source: str) -> bool:
    return not _COMMENT_OR_SPACE.match(source)


def _describe_expected(expected) -> str:
    expected = set(expected)
    parts = []
    if {"NAME", "NUMBER", "LPAR"} <= expected:
        parts.append("an expression")
        expected -= _EXPR_START
    if len(expected & _OPERATORS) >= 3:
        parts.append("an operator")
        expected -= _OPERATORS
        expected.discard("LPAR")  # `f(`: a call, reads as an operator here
    for terminal in _EXPECTED_NAMES:
        if terminal in expected:
            parts.append(_EXPECTED_NAMES[terminal])
    for keyword in _KEYWORDS:
        if keyword.upper() in expected:
            parts.append(f"'{keyword}'")
    if "$END" in expected:
        parts.append("end of file")
    if not parts:
        return "something else"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name '{_clip(token)}'"
    if token.type == "NUMBER":
        return f"number {_clip(token)}"
    if token.type == "STRING":
        return f"string {_clip(token)}"
    if token.type == "DOCSTRING":
        return "docstring"
    return f"'{_clip(token)}'"


def _open_brackets(source: str) -> list:
    """The brackets still open at the end of `source`: (char, index) pairs, comments and strings skipped."""
    stack = []
    i, n = 0, len(source)
    closing = {")": "(", "}": "{"}
    while i < n:
        c = source[i]
        if c == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        if source.startswith('"""', i):
            end = source.find('"""', i + 3)
            i = n if end < 0 else end + 3
            continue
        if c == '"':
            end = source.find('"', i + 1)
            newline = source.find("\n", i + 1)
            i = n if end < 0 else (end + 1 if newline < 0 or end < newline else newline)
            continue
        if c in "({":
            stack.append((c, i))
        elif c in ")}":
            if stack and stack[-1][0] == closing[c]:
                stack.pop()
            else:
                stack.append((c, i))  # unmatched closer
        i += 1
    return stack


def _end_position(source: str) -> Position:
    """Where "end of file" errors point: just after the last character that is not blank."""
    stripped = source.rstrip()
    if not stripped:
        return Position(1, 1)
    return _position_of(stripped, len(stripped))


def _syntax_error(exc: UnexpectedInput, source: str, start: str) -> SpecError:
    if isinstance(exc, UnexpectedCharacters):
        position = Position(exc.line or 1, exc.column or 1)
        index = exc.pos_in_stream
        char = source[index] if index < len(source) else ""
        if source.startswith('"""', index):
            return SpecError('unterminated docstring: no closing """', position)
        if char == '"':
            line_end = source.find("\n", index)
            rest = source[index + 1 : None if line_end < 0 else line_end]
            if '"' not in rest:
                return SpecError('unterminated string: no closing " on this line', position)
            return SpecError("unexpected string; strings appear only in `import \"file.opt\"`", position)
        message = f"unexpected character {char!r}"
        if ord(char or " ") > 127:
            message += f" (U+{ord(char):04X}); names use ASCII letters, digits and '_'"
        elif _CHARACTER_HINTS.get(char):
            message += f"; {_CHARACTER_HINTS[char]}"
        return SpecError(message, position)

    if isinstance(exc, UnexpectedEOF) or (isinstance(exc, UnexpectedToken) and exc.token.type == "$END"):
        expected = _accepted(exc)
        message = f"unexpected end of file; expected {_describe_expected(expected)}"
        opened = [(c, i) for c, i in _open_brackets(source) if c in "({"]
        if opened:
            char, index = opened[-1]
            where = _position_of(source, index)
            message += f" (the '{char}' on line {where.line}, column {where.column} is never closed)"
        return SpecError(message, _end_position(source))

    if isinstance(exc, UnexpectedToken):
        token = exc.token
        position = Position(token.line or 1, token.column or 1)
        expected = _accepted(exc)
        index = token.start_pos or 0
        if token.type == "STRING" and source.startswith('"""', index):
            return SpecError('unterminated docstring: no closing """', position)
        message = f"unexpected {_describe_token(token)}; expected {_describe_expected(expected)}"
        hint = _hint(token, expected, source, index, start)
        if hint:
            message += f" ({hint})"
        return SpecError(message, position)

    position = Position(getattr(exc, "line", 1) or 1, getattr(exc, "column", 1) or 1)
    return SpecError(str(exc).splitlines()[0], position)


def _accepted(exc) -> set:
    parser = getattr(exc, "interactive_parser", None)
    if parser is not None:
        try:
            return set(parser.accepts())
        except Exception:  # the plain expected set is a fine fallback
            pass
    return set(getattr(exc, "expected", None) or getattr(exc, "allowed", None) or ())


def _hint(token: Token, expected: set, source: str, index: int, start: str):
    before = source[:index].rstrip()
    after = source[index + len(token):]
    if "OPTIMIZER" in expected and start == "start":
        return "a spec starts with `optimizer Name`"
    if start == "prelude" and token.type in ("HYPER", "STATE", "UPDATE", "OPTIMIZER"):
        return "an imported file holds only `def` functions and `import`s"
    if token.type == "EQUAL" and "COMPARE_OP" in expected:
        return "to compare, write `==`"
    if token.value in ("+", "-", "*", "/", "^") and after.startswith("=") and "EQUAL" in expected:
        return f"there is no `{token.value}=`; write `x = x {token.value} ...`"
    if token.value == "*" and before.endswith("*"):
        return "powers are written x^2"
    if token.type == "IF" and before.endswith("else"):
        return "write `elif`"
    if token.type == "DOCSTRING":
        return "the docstring goes right after `optimizer Name`"
    if token.type == "RBRACE" and any(c == "}" for c, _ in _open_brackets(source[: index + 1])):
        return "no '{' is open here"
    if token.type == "RPAR" and any(c == ")" for c, _ in _open_brackets(source[: index + 1])):
        return "no '(' is open here"
    if {"WHERE", "AS"} <= expected and token.type in _OPERATORS | {"LPAR", "NAME", "NUMBER"}:
        return "a default is a literal: a number, true/false, or a tuple of numbers"
    return None


# -- files -------------------------------------------------------------------------------------


def parse_file(path: str | Path):
    """Parse a spec file and every file it imports. Returns the `ast.Spec` with imported functions
    prepended to `spec.funcs` (each keeping the path of the file it came from)."""
    path = Path(path)
    display = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read spec: {exc.strerror or exc}", None, display) from None
    source = decode(data, display)
    spec = parse_text(source, display)
    imported: list[ast.FuncDef] = []
    _resolve_imports(spec.imports, path, display, source, imported, [(path.resolve(), display)], set())
    spec.funcs = imported + spec.funcs
    return spec


def _resolve_imports(imports, importer: Path, display: str, source: str, out: list, chain: list, done: set) -> None:
    for imp in imports:
        def fail(message):
            return SpecError(message, imp.pos, display, source)

        if not imp.path.strip():
            raise fail('an import needs a file name: import "prelude.opt"')
        target_display = str(importer.parent / imp.path)
        try:
            target = (importer.parent / imp.path).resolve()
        except (OSError, RuntimeError, ValueError) as exc:
            raise fail(f"cannot import {_clip(repr(imp.path))}: {exc}") from None
        if target in (p for p, _ in chain):
            cycle = [d for p, d in chain[[p for p, _ in chain].index(target):]] + [target_display]
            raise fail("import cycle: " + " -> ".join(cycle))
        if target in done:
            continue  # already imported through another file
        if len(chain) >= MAX_IMPORT_DEPTH:
            raise fail(f"imports are nested more than {MAX_IMPORT_DEPTH} deep")
        try:
            data = target.read_bytes()
        except (OSError, ValueError) as exc:
            raise fail(f"cannot import {_clip(repr(imp.path))}: {getattr(exc, 'strerror', None) or exc}") from None
        text = decode(data, target_display)
        items = parse_text(text, target_display, start="prelude")
        done.add(target)
        nested = [i for i in items if isinstance(i, ast.Import)]
        _resolve_imports(nested, target, target_display, text, out, chain + [(target, target_display)], done)
        out.extend(i for i in items if isinstance(i, ast.FuncDef))


def is_loss_file(path) -> bool:
    """Whether a spec file holds a loss rule (`loss Name`) rather than an optimizer. Unreadable
    files are left to `parse_file` to report."""
    try:
        return is_loss_text(decode(Path(path).read_bytes(), str(path)))
    except (OSError, SpecError):
        return False
