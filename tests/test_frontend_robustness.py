"""No input makes the compiler crash, hang or write a file for a broken spec.

Whatever the bytes, `optdsl compile` either succeeds (status 0) or prints
`path:line:col: error: message` (or `path: error: message` for a file it cannot read) and exits
with status 1, writing nothing. Pathological inputs are listed one by one; a Hypothesis test then
feeds random bytes, truncations and single-character mutations of every shipped spec.
"""

import contextlib
import io
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optdsl import cli, compiler, verify

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.opt"))
SPEC_TEXTS = [path.read_text(encoding="utf-8") for path in SPECS]
ERROR_LINE = re.compile(r"^.+:\d+:\d+: error: ")
SIMPLE = "optimizer T\nhyper lr = 0.1\nupdate {\n    param = param - lr * grad\n}\n"


def run(data, command="compile", files=None, name="case.opt"):
    """Run `optdsl COMMAND` on `data` in a fresh folder holding the shipped prelude.

    Returns (status, stderr, path of the spec, files written to the output folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "specs" / "prelude", tmp / "prelude")
        for file_name, content in (files or {}).items():
            target = tmp / file_name
            target.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        path = tmp / name
        path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
        out = tmp / "out"
        argv = {"compile": ["compile", "-q", "-o", str(out), str(path)],
                "check": ["check", str(path)],
                "verify": ["verify", "--quick", "--steps", "1", str(path)]}[command]
        err, stdout = io.StringIO(), io.StringIO()
        start = time.monotonic()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(stdout):
            status = cli.main(argv)
        elapsed = time.monotonic() - start
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        for module in out.glob("*.py"):  # what is written must at least be valid Python
            compile(module.read_text(encoding="utf-8"), str(module), "exec")
        text = err.getvalue().replace(str(tmp) + "/", "")
    assert elapsed < 20, f"took {elapsed:.1f}s"
    return status, text, name, written


def assert_clean(status, err, written):
    """The contract for any input."""
    assert status in (0, 1), err
    assert "Traceback" not in err
    if status == 1:
        assert ERROR_LINE.match(err) or re.match(r"^.+: error: ", err), err
        assert written == [], written


def assert_spec_error(data, fragment, line=None, column=None, command="compile", files=None, in_file="case.opt"):
    status, err, name, written = run(data, command, files)
    assert_clean(status, err, written)
    assert status == 1, f"expected an error, compiled fine: {err}"
    first = err.splitlines()[0]
    assert fragment in first, err
    if line is not None:
        where = f"{in_file}:{line}:{column}: error: " if column is not None else f"{in_file}:{line}:"
        assert first.startswith(where), err
        lines = err.splitlines()
        assert len(lines) >= 3 and lines[2].rstrip().endswith("^"), err
    return err


# -- files that are not specs --------------------------------------------------------------------


@pytest.mark.parametrize("data", ["", "   \n\t\n", "# only\n# comments\n", "\n" * 1000])
def test_empty_files(data):
    assert_spec_error(data, "empty spec: a spec starts with `optimizer Name`", 1, 1)


def test_random_binary_junk():
    junk = bytes((i * 151 + 7) % 256 for i in range(4096))
    assert_spec_error(junk, "is not valid UTF-8")


def test_nul_bytes():
    assert_spec_error(b"optimizer T\n\x00\x00\x00", "NUL byte", 2, 1)


def test_invalid_utf8_points_at_the_bad_byte():
    err = assert_spec_error(b"optimizer T\nupdate { param = \xff\xfe }", "not valid UTF-8 text (byte 0xff", 2, 18)
    assert "update { param = " in err


def test_utf8_bom_is_ignored():
    status, err, _, written = run("\ufeff" + SIMPLE)
    assert status == 0, err
    assert "case.py" in written
    assert_spec_error("\ufeff" + SIMPLE.replace("grad", "gard"), "undefined name 'gard'", 4, 26)


def test_unreadable_spec_and_folder_as_spec(tmp_path, capsys):
    for target in (tmp_path / "missing.opt", tmp_path):
        assert cli.main(["compile", "-o", str(tmp_path / "out"), str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"{target}: error: cannot read spec: ")
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_smallest_specs_compile_to_working_modules(tmp_path):
    import torch

    for text in ("optimizer T\nupdate { param = param - grad }\n", "optimizer T\nupdate{param=grad}"):
        path = tmp_path / "tiny.opt"
        path.write_text(text)
        cls = compiler.load(path)
        weight = torch.ones(3, requires_grad=True)
        weight.grad = torch.full((3,), 0.25)
        cls([weight], backend="torch").step()
        assert torch.all(weight.detach() < 1)


# -- huge and deeply nested input ----------------------------------------------------------------


def test_ten_thousand_nested_parentheses():
    deep = "optimizer T\nupdate { param = " + "(grad + " * 10_000 + "1" + ")" * 10_000 + " }\n"
    assert_spec_error(deep, "expression is nested too deeply (more than 100 levels", 2)
    unclosed = "optimizer T\nupdate { param = " + "(" * 10_000
    assert_spec_error(unclosed, "unexpected end of file; expected an expression (the '(' on line 2, column 10017 is never closed)", 2, 10018)
    # Parentheses alone add no depth: this is just `param = grad`.
    status, err, _, _ = run("optimizer T\nupdate { param = " + "(" * 10_000 + "grad" + ")" * 10_000 + " }\n")
    assert status == 0, err


def test_one_megabyte_lines():
    for middle in ("+".join(["1"] * 500_000), "a" * 1_000_000, "9" * 1_000_000):
        assert_spec_error("optimizer T\nupdate { param = " + middle + " }\n", "spec is too large (", 2, 99_989)


def test_long_operator_chain_within_the_size_limit():
    assert_spec_error("optimizer T\nupdate { param = " + "+".join(["grad"] * 5000) + " }\n",
                      "expression is nested too deeply (more than 100 levels")


def test_huge_names_and_numbers():
    assert_spec_error("optimizer T\nupdate { param = " + "a" * 5000 + " }\n", "name is too long (5000 characters; at most 100)", 2, 18)
    assert_spec_error("optimizer T\nupdate { param = 1e999999 * grad }\n", "number 1e999999 is too large: it overflows to infinity", 2, 18)
    err = assert_spec_error("optimizer T\nupdate { param = " + "9" * 5000 + " }\n", "is too large: it overflows to infinity", 2, 18)
    assert len(err.splitlines()[0]) < 300  # the literal is shortened in the message
    assert_spec_error("optimizer T\nhyper lr = -1e400\nupdate { param = param - lr * grad }\n", "number 1e400 is too large", 2, 13)
    assert_spec_error("optimizer T\nupdate { param = 1e-999 * grad }\n", "number 1e-999 is too small: it rounds to 0", 2, 18)


def test_deeply_nested_if_blocks():
    text = "optimizer T\nhyper f = true\nupdate {\n" + "if f {\n" * 5000 + "param = grad\n" + "}\n" * 5000 + "}\n"
    assert_spec_error(text, "`if` blocks are nested more than 16 deep", 20, 1)


def test_deeply_nested_calls():
    text = "optimizer T\nupdate { param = " + "abs(" * 5000 + "grad" + ")" * 5000 + " }\n"
    assert_spec_error(text, "expression is nested too deeply", 2)
    text = "optimizer T\ndef f(x) = x + 1\nupdate { param = " + "f(" * 5000 + "grad" + ")" * 5000 + " }\n"
    assert_spec_error(text, "expression is nested too deeply", 3)


def test_deep_and_exponential_inlining():
    chain = "optimizer T\ndef f0(x) = x\n" + "".join(f"def f{i + 1}(x) = f{i}(x)\n" for i in range(300))
    assert_spec_error(chain + "update { param = f300(grad) }\n", "nested too deeply once functions are inlined", 303, 18)
    doubling = "optimizer T\ndef f0(x) = x\n" + "".join(f"def f{i + 1}(x) = f{i}(x) + f{i}(x)\n" for i in range(40))
    assert_spec_error(doubling + "update { param = f40(grad) }\n", "value is too large once functions are inlined", 43, 18)


def test_exponential_chain_of_locals():
    lines = "".join(f"    a{i + 1} = exp(a{i}) + a{i}\n" for i in range(40))
    text = "optimizer T\nupdate {\n    a0 = grad\n" + lines + "    param = a40\n}\n"
    assert_spec_error(text, "value is too large once functions are inlined and earlier assignments substituted", 16, 20)
    lines = "".join(f"    a{i + 1} = exp(exp(a{i}))\n" for i in range(80))
    text = "optimizer T\nupdate {\n    a0 = grad\n" + lines + "    param = a80\n}\n"
    assert_spec_error(text, "value is nested too deeply once earlier assignments are substituted", 53)


def test_many_hyperparameters_and_conditions():
    many = "optimizer T\n" + "".join(f"hyper h{i} = {i} where h{i} >= 0\n" for i in range(2000))
    status, err, _, written = run(many + "update { param = param - h1 * grad }\n")
    assert status == 0 and "case.py" in written, err
    flags = "optimizer T\n" + "".join(f"hyper f{i} = true\n" for i in range(300))
    ifs = "".join(f"    if f{i} {{ param = param - grad }}\n" for i in range(300))
    assert_spec_error(flags + "update {\n" + ifs + "}\n", "too many `if` conditions (more than 8)", 311, 8)
    elifs = "".join(f" elif lr > {i} {{ param = grad }}" for i in range(3000))
    assert_spec_error("optimizer T\nhyper lr = 1\nupdate {\n    if lr > 0 { param = grad }" + elifs + "\n}\n",
                      "too many `if` conditions")


# -- syntax ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, line, column, fragment", [
    ('optimizer T """unterminated\nupdate { param = grad }\n', 1, 13, 'unterminated docstring: no closing """'),
    ("optimizer T\nupdate { param = grad\n", 2, 22, "unexpected end of file; expected a name, '}' or 'if' (the '{' on line 2, column 8 is never closed)"),
    ("optimizer T\nupdate param = grad }\n", 2, 8, "unexpected name 'param'; expected '{'"),
    ("optimizer T\nupdate { param = grad } }\n", 2, 25, "unexpected '}'; expected 'import', 'hyper', 'state', 'def', 'update' or end of file (no '{' is open here)"),
    ("optimizer T\nwhile x\nupdate { param = grad }\n", 2, 1, "unexpected name 'while'; expected"),
    ("hyper lr = 1\nupdate { param = grad }\n", 1, 1, "unexpected 'hyper'; expected 'optimizer' (a spec starts with `optimizer Name`)"),
    ("optimizer T\nupdate { param = grad; }\n", 2, 22, "unexpected character ';'; statements need no separator"),
    ("optimizer T\nupdate { param = grad ** 2 }\n", 2, 24, "unexpected '*'; expected an expression (powers are written x^2)"),
    ("optimizer T\nupdate { param += grad }\n", 2, 16, "there is no `+=`"),
    ("optimizer T\nhyper lr = 1\nupdate { if lr = 1 { param = grad } }\n", 3, 16, "unexpected '='; expected an operator or '{' (to compare, write `==`)"),
    ("optimizer T\nhyper f = true\nupdate { if f { param = grad } else if f { param = -grad } }\n", 3, 37, "(write `elif`)"),
    ("optimizer T\nhyper lr = 2 * 3\nupdate { param = grad }\n", 2, 14, "a default is a literal"),
    ("optimizer T\nupdate { param = \"grad\" }\n", 2, 18, 'unexpected string "grad"; expected an expression'),
    ("optimizer T\nupdate { param = \"grad }\n", 2, 18, 'unterminated string'),
    ("optimizer Té\nupdate { param = grad }\n", 1, 12, "unexpected character 'é' (U+00E9)"),
    ("optimizer T\nupdate { param = max(grad, 1 }\n", 2, 30, "unexpected '}'; expected ')' or ','"),
    ("optimizer T\nupdate { param = grad }\n\"\"\"late doc\"\"\"\n", 3, 1, "unexpected docstring"),
])
def test_syntax_errors_read_well(text, line, column, fragment):
    assert_spec_error(text, fragment, line, column)


def test_tabs_count_as_one_column_and_the_caret_lines_up():
    err = assert_spec_error("optimizer T\nupdate {\n\tparam = \tfoo\n}\n", "undefined name 'foo'", 3, 11)
    lines = err.splitlines()
    # The excerpt expands tabs to 4-column stops; the caret sits under the `f` of `foo`.
    assert lines[1] == "        param =     foo"
    assert lines[2].index("^") == lines[1].index("foo")


def test_crlf_and_cr_line_endings_give_the_same_positions():
    lf = "optimizer T\nupdate {\n  param = foo\n}\n"
    for text in (lf, lf.replace("\n", "\r\n"), lf.replace("\n", "\r")):
        err = assert_spec_error(text, "undefined name 'foo'", 3, 11)
        assert err.splitlines()[1] == "      param = foo"


def test_control_characters_are_shown_without_breaking_the_caret():
    err = assert_spec_error("optimizer T\nupdate { param = grad \x01 }\n", "unexpected character '\\x01'", 2, 23)
    lines = err.splitlines()
    assert lines[1] == "    update { param = grad \u2401 }"
    assert lines[2].index("^") == lines[1].index("\u2401")


# -- imports -------------------------------------------------------------------------------------


def test_import_of_a_missing_file():
    text = 'optimizer T\nimport "nope.opt"\nupdate { param = grad }\n'
    assert_spec_error(text, "cannot import 'nope.opt': No such file or directory", 2, 8)


def test_import_cycles():
    files = {"a.opt": 'import "b.opt"\n', "b.opt": '# b\nimport "a.opt"\n'}
    text = 'optimizer T\nimport "a.opt"\nupdate { param = grad }\n'
    assert_spec_error(text, "import cycle: a.opt -> b.opt -> a.opt", 2, 8, files=files, in_file="b.opt")
    assert_spec_error('optimizer T\nimport "case.opt"\nupdate { param = grad }\n', "import cycle: case.opt -> case.opt", 2, 8)


def test_syntax_error_in_an_imported_file_points_into_it():
    files = {"lib.opt": "# helpers\ndef f(x) = x +\n"}
    text = 'optimizer T\nimport "lib.opt"\nupdate { param = f(grad) }\n'
    err = assert_spec_error(text, "unexpected end of file; expected an expression", 2, 15, files=files, in_file="lib.opt")
    assert err.splitlines()[1] == "    def f(x) = x +"


def test_imported_file_with_declarations_it_may_not_hold():
    files = {"lib.opt": "hyper lr = 1\n"}
    text = 'optimizer T\nimport "lib.opt"\nupdate { param = grad }\n'
    assert_spec_error(text, "an imported file holds only `def` functions and `import`s", 1, 1, files=files, in_file="lib.opt")


def test_binary_imported_file():
    files = {"lib.opt": b"def f(x) = x\n\xc3\x28"}
    assert_spec_error('optimizer T\nimport "lib.opt"\nupdate { param = grad }\n', "not valid UTF-8", 2, 1, files=files, in_file="lib.opt")


def test_diamond_import_reads_a_file_once():
    files = {"a.opt": 'import "c.opt"\n', "b.opt": 'import "c.opt"\n', "c.opt": "def f(x) = 2 * x\n"}
    status, err, _, _ = run('optimizer T\nimport "a.opt"\nimport "b.opt"\nupdate { param = f(grad) }\n', files=files)
    assert status == 0, err


# -- every command -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["compile", "check", "verify"])
@pytest.mark.parametrize("data", [b"", b"\xff\xfe\x00junk", "optimizer T\nupdate { param = " + "(" * 10_000,
                                  "optimizer T\nupdate {\n\tparam = foo\n}\n", "x" * 200_000])
def test_every_command_reports_errors_the_same_way(command, data):
    status, err, _, written = run(data, command)
    assert status == 1
    assert_clean(status, err, written)
    assert ERROR_LINE.match(err), err


@pytest.mark.parametrize("command, target", [
    ("compile", (compiler, "compile_file")), ("check", (compiler, "check_file")), ("verify", (verify, "verify_file")),
])
def test_internal_errors_are_reported_without_a_traceback(monkeypatch, command, target):
    def broken(*args, **kwargs):
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(*target, broken)
    status, err, name, written = run(SIMPLE, command)
    assert status == 2
    assert err.startswith(f"{name}: error: internal compiler error: RecursionError: maximum recursion depth exceeded\n")
    assert "Traceback" not in err
    assert written == []


def test_output_folder_that_cannot_be_created(tmp_path, capsys):
    spec = tmp_path / "t.opt"
    spec.write_text(SIMPLE)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert cli.main(["compile", "-o", str(blocker / "out"), str(spec)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{blocker / 'out'}: error: cannot create the output folder: ")


def test_one_broken_spec_means_nothing_is_written(tmp_path, capsys):
    good, bad = tmp_path / "good.opt", tmp_path / "bad.opt"
    good.write_text(SIMPLE)
    bad.write_text(SIMPLE.replace("lr * grad", "lr * "))
    assert cli.main(["compile", "-o", str(tmp_path / "out"), str(good), str(bad)]) == 1
    assert f"{bad}:5:1: error: unexpected '}}'; expected an expression" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# -- random input (Hypothesis) ---------------------------------------------------------------------

FUZZ = settings(derandomize=True, max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CHARACTERS = list("(){}=+-*/^<>!,.:#\"\n\t 0123456789eE_az") + [
    "\r", "\x00", "\ufeff", "é", "if", "else", "and", "not", "where", "hyper", "state", "def", "update",
    "import", "true", "as", "step", "param", "grad", "fresh(", "sqrt(", "inf", "1e999", "none",
]


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data):
    status, err, _, written = run(data)
    assert status == 1
    assert_clean(status, err, written)


@FUZZ
@given(st.sampled_from(range(len(SPECS))), st.floats(0, 1))
def test_truncated_specs(index, fraction):
    text = SPEC_TEXTS[index]
    status, err, _, written = run(text[: int(len(text) * fraction)])
    assert_clean(status, err, written)


@settings(FUZZ, max_examples=400)
@given(st.sampled_from(range(len(SPECS))), st.floats(0, 1), st.sampled_from(["insert", "delete", "replace"]),
       st.sampled_from(CHARACTERS))
def test_mutated_specs(index, fraction, how, character):
    text = SPEC_TEXTS[index]
    at = int(len(text) * fraction)
    mutated = {
        "insert": text[:at] + character + text[at:],
        "delete": text[:at] + text[at + 1:],
        "replace": text[:at] + character + text[at + 1:],
    }[how]
    status, err, _, written = run(mutated.encode("utf-8", errors="surrogatepass"))
    assert_clean(status, err, written)
