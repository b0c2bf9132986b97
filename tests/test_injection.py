"""A spec cannot inject Python into the generated module.

Text from a spec reaches the module in three ways: the docstring (escaped into two string
literals), names (identifiers, checked against everything the module defines itself) and numbers
(reprinted). The file's path reaches a comment. For each, hostile input must either be rejected
with a located error or come out as inert data: the module imports, its docstrings equal the
spec's text, and its top level holds only the statements the template writes.
"""

from __future__ import annotations

import ast
import inspect
import sys

import pytest
import torch

from optdsl.compiler import check_file, compile_file, load_module
from optdsl.errors import SpecError
from optdsl.verify import _compare, _interpretation_rows, _run, _Spec, _tensors

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # masked-off lanes in the interpreter

BODY = "hyper lr = 0.1\nupdate { param = param - lr * grad }\n"

# Docstrings the grammar accepts (a DOCSTRING is anything up to the first `"""`), each written
# to break out of the string, the template or the comment it lands in.
DOCSTRINGS = {
    "backslashes": r"C:\path\new \t \x41 \N{BULLET} \u0041 \\ \" x",
    "escaped triple quotes": r"\"\"\" and \"\"\" x",
    "quote runs": "a \"quoted\" 'word' and \"\" two",
    "ends with a quote": 'says "hi" ',
    "ends with two quotes": 'an empty "" ',
    "quote then backslash": '"\\',
    "trailing backslash": "ends with a backslash \\",
    "lone backslash": "\\",
    "backslash before newline": "line \\\n continued \\",
    "jinja and f-string braces": "{ } {{ name }} {% if true %}x{% endif %} {# c #} {0} {__import__('os')} {{{{",
    "code after a newline": "first line\n\"\"\nimport os\nos.system('echo pwned')\n'''",
    "newline import": "\n import os",
    "close and reopen": '\\"" + __import__("os").getcwd() + ""\\',
    "unicode": "é ü 中文 😀 \u202e reversed \u200b zero width",
    "tabs": "col1\tcol2\n\tindented",
}

EXPECTED_IMPORTS = ["from __future__ import annotations", "import math", "import os", "import torch"]
EXPECTED_TOP_ASSIGNMENTS = {"BLOCK_SIZE", "CPU_CHUNK", "_VARIANTS"}


def _write(tmp_path, text, name="spec.opt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _assert_only_template_statements(source: str, class_name: str):
    """The module's top level (and its class body) holds only what the template writes."""
    tree = ast.parse(source)
    body = list(tree.body)
    first = body.pop(0)
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)
    imports = [ast.unparse(body.pop(0)) for _ in EXPECTED_IMPORTS]
    assert imports == EXPECTED_IMPORTS
    guard = body.pop(0)
    assert isinstance(guard, ast.Try)
    assert [ast.unparse(s) for s in guard.body] == ["import triton", "import triton.language as tl"]
    assert [ast.unparse(h) for h in guard.handlers] == ["except ImportError:\n    triton = None"]
    classes = []
    for node in body:
        if isinstance(node, ast.FunctionDef):
            assert all(ast.unparse(d) == "_jit" for d in node.decorator_list), ast.unparse(node)[:200]
        elif isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            assert len(targets) == 1 and targets[0] in EXPECTED_TOP_ASSIGNMENTS, ast.unparse(node)[:200]
        elif isinstance(node, ast.ClassDef):
            classes.append(node)
        else:
            pytest.fail(f"unexpected top-level statement: {ast.unparse(node)[:200]}")
    assert [c.name for c in classes] == [class_name]
    (cls,) = classes
    assert [ast.unparse(b) for b in cls.bases] == ["torch.optim.Optimizer"]
    doc, *methods = cls.body
    assert isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant)
    assert all(isinstance(m, ast.FunctionDef) for m in methods), [ast.unparse(m)[:80] for m in methods]
    # Nothing in the module evaluates text: no eval/exec/compile/__import__/os.system anywhere.
    called = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not called & {"eval", "exec", "compile", "__import__", "os.system", "getattr", "globals"}, called


def _class_doc_text(raw: str) -> str:
    """The spec docstring inside the class docstring (which the template indents by 4)."""
    head = raw[: raw.rindex("\n\n    Args:")]
    first, *rest = head.split("\n")
    return "\n".join([first] + [line[4:] if line.startswith("    ") else line for line in rest])


@pytest.mark.parametrize("doc", list(DOCSTRINGS.values()), ids=list(DOCSTRINGS))
def test_docstring_is_inert(tmp_path, doc):
    path = _write(tmp_path, f'optimizer Quoted """{doc}"""\n{BODY}')
    compiled = compile_file(path)
    text = compiled.checked.spec.doc  # the spec's docstring text (dedented and stripped)
    assert text.strip(), "the docstring should not be empty"
    _assert_only_template_statements(compiled.source, "Quoted")
    module = load_module(path)
    cls = module.Quoted
    assert module.__doc__.startswith(f"{text}\n\nA fused Triton kernel")
    if sys.version_info < (3, 13):
        assert _class_doc_text(cls.__doc__) == text
    else:  # Python 3.13 strips docstring indentation at compile time
        assert inspect.cleandoc(_class_doc_text(cls.__doc__)) == inspect.cleandoc(text)
    # It still works.
    p = torch.ones(3, requires_grad=True)
    opt = cls([p])
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 0.9))


def test_docstring_text_round_trips_exactly(tmp_path):
    """Every character of a docstring the grammar allows comes back, however it is escaped."""
    doc = "".join(chr(c) for c in range(33, 127) if chr(c) != '"') + ' "q" \\ \\\\ \\n {{x}} é\t.'
    path = _write(tmp_path, f'optimizer Every """{doc}"""\n{BODY}')
    module = load_module(path)
    assert module.__doc__.startswith(f"{doc}\n\nA fused Triton kernel")
    assert _class_doc_text(module.Every.__doc__) == doc


def test_closing_the_docstring_early_is_a_parse_error(tmp_path):
    # The first `"""` ends a docstring, so what follows it must parse as spec text.
    path = _write(tmp_path, 'optimizer Early """\\""" + __import__("os").getcwd() + """x"""\n' + BODY)
    with pytest.raises(SpecError) as info:
        compile_file(path)
    assert info.value.position.line == 1


def test_a_nul_byte_in_the_docstring_is_rejected(tmp_path):
    path = tmp_path / "nul.opt"
    path.write_bytes(b'optimizer Nul """a \x00 b"""\n' + BODY.encode())
    with pytest.raises(SpecError) as info:
        compile_file(path)
    assert info.value.position is not None and info.value.position.line == 1


def test_crlf_spec_compiles_with_the_same_docstring(tmp_path):
    path = tmp_path / "crlf.opt"
    path.write_bytes(b'optimizer Crlf """one\r\ntwo \\\r\nthree"""\r\n' + BODY.replace("\n", "\r\n").encode())
    compiled = compile_file(path)
    assert "\r" not in compiled.source
    module = load_module(path)
    assert module.__doc__.startswith("one\ntwo \\\nthree\n\nA fused Triton kernel")


def test_file_path_cannot_inject_into_the_header_comment(tmp_path):
    # The path lands in a `#` comment; a newline in it would start a line of code.
    name = "evil\nimport os\nos.system('echo pwned')\n#.opt"
    path = _write(tmp_path, f"optimizer Evil\n{BODY}", name=name)
    compiled = compile_file(path)
    header = compiled.source.split('"""', 1)[0]
    assert all(line.startswith("#") for line in header.splitlines()), header
    assert "evil\\nimport os\\nos.system" in header
    _assert_only_template_statements(compiled.source, "Evil")
    assert load_module(path).Evil.__name__ == "Evil"


# --- names -----------------------------------------------------------------------------------------

# (role, spec text with NAME for the name, (line, column) of the error)
ROLES = {
    "hyperparameter": ("optimizer R\nhyper NAME = 0.1\nupdate { param = param - NAME * grad }\n", (2, 7)),
    "flag": ("optimizer R\nhyper NAME = false\nupdate { param = param - where(NAME, 0.1, 0.2) * grad }\n", (2, 7)),
    "tuple component": ("optimizer R\nhyper betas = (0.1, 0.2) as (NAME, b2)\n"
                        "update { param = param - NAME * b2 * grad }\n", (2, 7)),
    "state": ("optimizer R\nhyper lr = 0.1\nstate NAME = 0\nupdate {\n    NAME = NAME + grad\n"
              "    param = param - lr * NAME\n}\n", (3, 7)),
    "local": ("optimizer R\nhyper lr = 0.1\nupdate {\n    NAME = grad * 2\n    param = param - lr * NAME\n}\n", (4, 5)),
}

# Python keywords and constants, and names the generated module itself uses (modules, the Triton
# kernel's own variables, the optimizer's `self`/`state`/`group`/`h`, `_private` helpers, `*_ptr`
# kernel arguments): rejected in every role.
EVERYWHERE = ["lambda", "None", "True", "class", "torch", "tl", "triton", "math", "self", "state", "group", "h",
              "_x", "_reference", "x_ptr", "offsets", "mask", "n_elements", "BLOCK_SIZE"]
# A hyperparameter is a keyword argument of __init__ and a variable in _validate, the launchers and
# the kernels, which call Python builtins: builtins are rejected there, and the names the
# constructor and _validate use.
HYPERPARAMETER_ONLY = ["float", "bool", "len", "isinstance", "super", "print", "tuple", "ValueError",
                       "params", "backend", "value"]

CASES = [(role, name) for role in ROLES for name in EVERYWHERE]
CASES += [(role, name) for role in ("hyperparameter", "flag", "tuple component") for name in HYPERPARAMETER_ONLY]
CASES += [("state", "float")]


@pytest.mark.parametrize("role, name", CASES, ids=[f"{r}-{n}" for r, n in CASES])
def test_reserved_names_are_rejected_with_a_location(tmp_path, role, name):
    template, (line, column) = ROLES[role]
    path = _write(tmp_path, template.replace("NAME", name))
    for stage in (check_file, compile_file):  # `optdsl check` and `optdsl compile` agree
        with pytest.raises(SpecError) as info:
            stage(path)
        error = info.value
        assert (error.position.line, error.position.column) == (line, column), error.format()
        assert name in error.message
        assert error.format().startswith(f"{path}:{line}:{column}: error: ")


@pytest.mark.parametrize("name", ["float", "dict", "len", "super", "isinstance", "CPU_CHUNK", "torch", "os", "lambda"])
def test_optimizer_names_that_shadow_module_globals_are_rejected(tmp_path, name):
    # The class is a module global: `optimizer float` replaced the float() that _as_float calls.
    path = _write(tmp_path, f"optimizer {name}\n{BODY}")
    with pytest.raises(SpecError) as info:
        compile_file(path)
    assert (info.value.position.line, info.value.position.column) == (1, 11)
    assert name in info.value.message


@pytest.mark.parametrize("role", ["hyperparameter", "state", "local"])
def test_fresh_flag_names_are_rejected(tmp_path, role):
    # `fresh_m` holds fresh(m) in the generated reference: no spec name may take it.
    text = {
        "hyperparameter": "optimizer R\nhyper fresh_m = 0.1\nstate m = 0\nupdate { m = grad\n param = param - fresh_m * m }\n",
        "state": "optimizer R\nstate fresh_m = 0\nstate m = 0\nupdate { m = grad\n fresh_m = m\n param = param - 0.1 * m }\n",
        "local": ("optimizer R\nstate m = 0\nupdate {\n    fresh_m = 5\n    if fresh(m) { m = grad } else { m = m + fresh_m * grad }\n"
                  "    param = param - 0.1 * m\n}\n"),
    }[role]
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        compile_file(path)
    assert "fresh_m" in info.value.message and info.value.position is not None


def test_builtin_names_for_states_and_locals_still_work(tmp_path):
    """Locals and states may be named like builtins (torch.optim.Adagrad's state is `sum`): the
    kernels rename locals away from builtins, and the reference does not call them."""
    path = _write(tmp_path, (
        "optimizer Builtins\nhyper lr = 0.1\nhyper flag = false\nstate sum = 0\nstate len = 1\n"
        "update {\n"
        "    float = grad * 2 + min(lr, inf) + max(-inf, lr)\n"
        "    value = float / (abs(float) + 1)\n"
        "    if flag { params = value } else { params = -value }\n"
        "    sum = sum + params^2\n"
        "    len = max(len, abs(value))\n"
        "    param = param - lr * params / sqrt(sum + 1) * len\n"
        "}\n"))
    spec = _Spec(path)
    gen = torch.Generator().manual_seed(0)
    base, grads = _tensors(((5, 7), (1025,), ()), gen, 3)
    for config in ({}, {"flag": True}):
        for row in _interpretation_rows(spec, "builtins", config, base, grads):
            assert row.ok, row
        *_, ref = _run(spec, config, base, grads, torch.float32, "torch", "cpu")
        *_, tri = _run(spec, config, base, grads, torch.float32, "triton", "cpu")
        errors, _ = _compare(tri, ref)
        assert set(errors) == {"param", "sum", "len"} and max(errors.values()) <= 1e-5, errors


def test_numbers_are_reprinted_as_python_accepts(tmp_path):
    # `007` is a SyntaxError in Python and 99999999999999999999 overflows torch's int64.
    path = _write(tmp_path, "optimizer Num\nhyper lr = 007e-3\n"
                            "update { param = param - lr * 007 * grad * 99999999999999999999 / 99999999999999999999 }\n")
    module = load_module(path)
    for backend in ("torch", "triton"):
        p = torch.ones(3, requires_grad=True)
        opt = module.Num([p], backend=backend)
        p.grad = torch.ones(3)
        opt.step()
        assert torch.allclose(p.detach(), torch.full((3,), 1 - 0.007 * 7)), backend
