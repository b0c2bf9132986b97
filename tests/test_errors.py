"""Every checker error, through the real command line: `optdsl check FILE` prints

    FILE:LINE:COL: error: MESSAGE
        <the source line>
        <caret under COL>

on stderr and exits with status 1. Each test pins the exact line and column.
"""

import subprocess
import sys
import textwrap

import pytest

from optdsl import cli

HEAD = """\
optimizer T
hyper lr = 0.1
hyper flag = false
state buf = 0
"""
# Lines 1-4 are HEAD; a body written after it starts on line 5.


def check(tmp_path, capsys, text, name="spec.opt", files=None):
    for file_name, content in (files or {}).items():
        (tmp_path / file_name).write_text(content)
    path = tmp_path / name
    path.write_text(text)
    status = cli.main(["check", str(path)])
    return status, capsys.readouterr().err, path


def assert_error(tmp_path, capsys, text, line, column, fragment, files=None, in_file=None):
    """Run `optdsl check` on `text` and assert the complete printed error."""
    status, err, path = check(tmp_path, capsys, text, files=files)
    assert status == 1, err
    assert "Traceback" not in err
    where = tmp_path / in_file if in_file else path
    source = (files or {}).get(in_file, text) if in_file else text
    lines = err.splitlines()
    assert lines[0].startswith(f"{where}:{line}:{column}: error: "), err
    assert fragment in lines[0], err
    source_line = source.split("\n")[line - 1]
    assert "\t" not in source_line  # (tabs are tested in test_frontend_robustness.py)
    assert lines[1] == "    " + source_line, err
    assert lines[2] == "    " + " " * (column - 1) + "^", err
    return lines[0]


def body(statements: str) -> str:
    """HEAD, then `update {` on line 5 and the statements, indented by 4, from line 6 on."""
    return HEAD + "update {\n" + textwrap.indent(textwrap.dedent(statements).strip("\n"), "    ") + "\n}\n"


# -- names and calls -----------------------------------------------------------------------------


def test_undefined_name(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        param = param - lr * bfu
    """)
    assert_error(tmp_path, capsys, text, 7, 26, "undefined name 'bfu'")


def test_unknown_function(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        param = param - lr * sqr(buf)
    """)
    assert_error(tmp_path, capsys, text, 7, 26, "unknown function 'sqr'")


def test_wrong_arity_of_a_builtin(tmp_path, capsys):
    text = body("""
        buf = max(buf, grad, 0)
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 11, "max() takes 1 argument (the largest value of a tensor) or 2 (elementwise), got 3")


def test_wrong_arity_of_a_user_function(tmp_path, capsys):
    text = HEAD + "def ema(s, x, b) = b * s + (1 - b) * x\n" + "update {\n    buf = ema(buf, grad)\n    param = param - lr * buf\n}\n"
    assert_error(tmp_path, capsys, text, 7, 11, "ema() takes 3 arguments, got 2")


def test_name_used_as_a_function_and_function_used_as_a_name(tmp_path, capsys):
    text = body("""
        buf = lr(grad)
        param = param - buf
    """)
    assert_error(tmp_path, capsys, text, 6, 11, "'lr' is not a function")
    text = body("""
        buf = sqrt + grad
        param = param - buf
    """)
    assert_error(tmp_path, capsys, text, 6, 11, "'sqrt' is a function; call it as sqrt(...)")


# -- duplicate definitions -----------------------------------------------------------------------


def test_duplicate_hyperparameter(tmp_path, capsys):
    text = HEAD + "hyper lr = 0.2\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 5, 7, "duplicate definition of 'lr' (already a hyperparameter)")


def test_duplicate_state(tmp_path, capsys):
    text = HEAD + "state buf = 1\nupdate { param = param - lr * buf }\n"
    assert_error(tmp_path, capsys, text, 5, 7, "duplicate definition of 'buf' (already a state)")


def test_duplicate_function(tmp_path, capsys):
    text = HEAD + "def f(x) = x\ndef f(y) = 2 * y\nupdate { param = param - lr * f(grad) }\n"
    assert_error(tmp_path, capsys, text, 6, 5, "duplicate definition of 'f' (already a function)")


def test_state_with_the_name_of_a_hyperparameter(tmp_path, capsys):
    text = HEAD + "state lr = 0\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 5, 7, "duplicate definition of 'lr' (already a hyperparameter)")


def test_duplicate_definition_in_an_imported_file_points_at_the_spec(tmp_path, capsys):
    files = {"lib.opt": "def f(x) = x\n"}
    text = HEAD + 'import "lib.opt"\ndef f(y) = y\nupdate { param = param - lr * f(grad) }\n'
    assert_error(tmp_path, capsys, text, 6, 5, "duplicate definition of 'f'", files=files)


# -- assignments ---------------------------------------------------------------------------------


def test_assignment_to_grad(tmp_path, capsys):
    text = body("""
        grad = grad * 2
        param = param - lr * grad
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "cannot assign to 'grad': the gradient is read-only")


def test_assignment_to_step(tmp_path, capsys):
    text = body("""
        step = step + 1
        param = param - lr * grad
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "cannot assign to 'step'")


def test_assignment_to_a_hyperparameter(tmp_path, capsys):
    text = body("""
        lr = lr * 2
        param = param - lr * grad
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "cannot assign to hyperparameter 'lr'")


def test_assignment_to_a_function(tmp_path, capsys):
    text = HEAD + "def f(x) = x\nupdate {\n    f = grad\n    param = param - lr * f\n}\n"
    assert_error(tmp_path, capsys, text, 7, 5, "cannot assign to function 'f'")
    text = body("""
        sqrt = grad
        param = param - lr * sqrt
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "cannot assign to function 'sqrt'")


def test_assignment_to_a_constant(tmp_path, capsys):
    text = body("""
        pi = 3
        param = param - lr * pi * grad
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "cannot assign to the constant 'pi'")


# -- reserved names ------------------------------------------------------------------------------


@pytest.mark.parametrize("declaration, column, fragment", [
    ("hyper lambda = 1", 7, "'lambda' is reserved: it is a Python keyword"),
    ("hyper torch = 1", 7, "'torch' is reserved: the generated code uses this name itself"),
    ("state _hidden = 0", 7, "'_hidden' is reserved: names starting with '_'"),
    ("state x_ptr = 0", 7, "'x_ptr' is reserved"),
    ("hyper true = 1", 7, "'true' is a keyword of the language"),
    ("def update(x) = x", 5, "'update' is a keyword of the language"),
])
def test_reserved_declaration_names(tmp_path, capsys, declaration, column, fragment):
    text = HEAD + declaration + "\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 5, column, fragment)


def test_reserved_local_name(tmp_path, capsys):
    text = body("""
        mask = grad
        param = param - lr * mask
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "'mask' is reserved")


def test_reserved_optimizer_name(tmp_path, capsys):
    text = "optimizer class\nupdate { param = param - grad }\n"
    assert_error(tmp_path, capsys, text, 1, 11, "'class' is reserved: it is a Python keyword")


def test_declaration_shadowing_a_builtin(tmp_path, capsys):
    text = HEAD + "hyper sqrt = 1\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 5, 7, "hyperparameter 'sqrt' shadows the builtin function sqrt()")
    text = HEAD + "state grad = 0\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 5, 7, "state 'grad' shadows the builtin 'grad'")


# -- types: numbers and conditions ---------------------------------------------------------------


def test_condition_used_as_a_number(tmp_path, capsys):
    text = body("""
        buf = buf + flag
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 17, "'+' needs numbers, but this is a condition")


def test_comparison_assigned_as_a_number(tmp_path, capsys):
    text = body("""
        buf = grad > 0
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 16, "buf must be a number; this is a condition")


def test_condition_local_used_as_a_number(tmp_path, capsys):
    text = body("""
        positive = grad > 0
        param = param - lr * positive
    """)
    assert_error(tmp_path, capsys, text, 7, 26, "'*' needs numbers, but this is a condition")


def test_local_that_is_a_condition_on_one_path_and_a_number_on_another(tmp_path, capsys):
    text = body("""
        if flag {
            keep = grad > 0
        } else {
            keep = 1
        }
        param = param - lr * where(keep, grad, 0)
    """)
    assert_error(tmp_path, capsys, text, 6, 5, "'keep' is a condition on one path through this `if` and a number on another")


def test_comparing_a_set_hyperparameter_with_none(tmp_path, capsys):
    text = body("""
        buf = where(lr == none, grad, 0)
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 17, "only a hyperparameter that defaults to `none` can be compared with none")


def test_none_used_as_a_value(tmp_path, capsys):
    text = body("""
        buf = none
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 11, "`none` is not a value")


def test_number_used_as_a_condition(tmp_path, capsys):
    text = body("""
        buf = where(grad > 0 and lr, grad, 0)
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 30, "'and' needs conditions, but this is a number")


def test_if_on_a_number(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        if lr { buf = buf * 2 }
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 7, 8, "an `if` needs a condition")


def test_builtin_argument_of_the_wrong_type(tmp_path, capsys):
    text = body("""
        buf = where(grad, 1, 0)
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 17, "where() expects a condition here")


# -- if ------------------------------------------------------------------------------------------


def test_if_on_a_per_element_condition(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        if buf > 0 { buf = buf * 2 }
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 7, 12, "an `if` condition must not depend on tensor values")


def test_name_defined_in_only_one_branch(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        if flag { d = buf } else { buf = -buf }
        param = param - lr * d
    """)
    assert_error(tmp_path, capsys, text, 8, 26, "'d' is not assigned on every path through the `if` above")


def test_too_many_if_conditions(tmp_path, capsys):
    flags = "".join(f"hyper f{i} = false\n" for i in range(9))
    ifs = "".join(f"    if f{i} {{ d = d * 2 }}\n" for i in range(9))
    text = "optimizer T\n" + flags + "update {\n    d = grad\n" + ifs + "    param = param - d\n}\n"
    assert_error(tmp_path, capsys, text, 21, 8, "too many `if` conditions (more than 8)")


# -- locals --------------------------------------------------------------------------------------


def test_local_assigned_but_never_used(tmp_path, capsys):
    text = body("""
        buf = buf + grad
        bfu = buf * 2
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 7, 5, "'bfu' is assigned but never used")


def test_local_used_before_it_is_assigned(tmp_path, capsys):
    text = body("""
        buf = buf + d
        d = grad
        param = param - lr * buf * d
    """)
    assert_error(tmp_path, capsys, text, 6, 17, "undefined name 'd'")


# -- functions -----------------------------------------------------------------------------------


def test_direct_recursion(tmp_path, capsys):
    text = HEAD + "def f(x) = f(x) + 1\nupdate { param = param - lr * f(grad) }\n"
    assert_error(tmp_path, capsys, text, 5, 12, "function f calls itself (recursion is not supported)")


def test_mutual_recursion_across_files(tmp_path, capsys):
    # Imported functions are checked first: the cycle g -> f -> g closes in the spec's f.
    files = {"lib.opt": "# helpers\ndef g(x) = 2 * f(x)\n"}
    text = HEAD + 'import "lib.opt"\ndef f(x) = g(x) + 1\nupdate { param = param - lr * f(grad) }\n'
    assert_error(tmp_path, capsys, text, 6, 12, "function g calls itself through g -> f -> g", files=files)


def test_recursion_inside_an_imported_file_points_into_that_file(tmp_path, capsys):
    files = {"lib.opt": "# helpers\ndef g(x) = k(x)\ndef k(x) = 2 * g(x)\n"}
    text = HEAD + 'import "lib.opt"\nupdate { param = param - lr * g(grad) }\n'
    assert_error(tmp_path, capsys, text, 3, 16, "function g calls itself through g -> k -> g",
                 files=files, in_file="lib.opt")


def test_function_sees_only_its_parameters(tmp_path, capsys):
    text = HEAD + "def f(x) = x * lr\nupdate { param = param - f(grad) }\n"
    assert_error(tmp_path, capsys, text, 5, 16, "undefined name 'lr' in function f")


def test_error_in_an_imported_function_points_into_that_file(tmp_path, capsys):
    files = {"lib.opt": "# helpers\n\ndef f(x) = x + flag\n"}
    text = HEAD + 'import "lib.opt"\nupdate { param = param - lr * f(grad) }\n'
    assert_error(tmp_path, capsys, text, 3, 16, "undefined name 'flag' in function f", files=files, in_file="lib.opt")


# -- fresh() -------------------------------------------------------------------------------------


def test_fresh_of_something_that_is_not_a_state(tmp_path, capsys):
    text = body("""
        buf = where(fresh(grad), grad, buf + grad)
        param = param - lr * buf
    """)
    assert_error(tmp_path, capsys, text, 6, 17, "fresh() takes one state name")


def test_fresh_in_a_function(tmp_path, capsys):
    text = HEAD + "def f(x) = where(fresh(x), 1, 0)\nupdate { param = param - lr * f(grad) }\n"
    assert_error(tmp_path, capsys, text, 5, 18, "fresh() is only available in the update block")


# -- declarations --------------------------------------------------------------------------------


def test_state_init_that_uses_grad(tmp_path, capsys):
    text = "optimizer T\nhyper lr = 0.1\nstate buf = grad * lr\nupdate { param = param - lr * buf }\n"
    line = assert_error(tmp_path, capsys, text, 3, 13, "'grad' is not available here")
    assert "a state starts as `param` or as a constant built from hyperparameters" in line


def test_state_init_that_uses_step(tmp_path, capsys):
    text = "optimizer T\nhyper lr = 0.1\nstate buf = step\nupdate { param = param - lr * buf }\n"
    assert_error(tmp_path, capsys, text, 3, 13, "'step' is not available here")


def test_constraint_that_is_not_a_condition(tmp_path, capsys):
    text = "optimizer T\nhyper lr = 0.1 where lr * 2\nupdate { param = param - lr * grad }\n"
    assert_error(tmp_path, capsys, text, 2, 25, "the constraint on lr must be a condition")


def test_tuple_default_without_as(tmp_path, capsys):
    text = "optimizer T\nhyper betas = (0.9, 0.999)\nupdate { param = param - grad }\n"
    assert_error(tmp_path, capsys, text, 2, 7, "tuple hyperparameter betas needs names for its parts")


def test_as_with_the_wrong_number_of_names(tmp_path, capsys):
    text = "optimizer T\nhyper betas = (0.9, 0.999, 0.5) as (b1, b2)\nupdate { param = param - b1 * b2 * grad }\n"
    assert_error(tmp_path, capsys, text, 2, 7, "betas has 3 components but `as` names 2")


def test_as_on_a_scalar(tmp_path, capsys):
    text = "optimizer T\nhyper lr = 0.1 as (a, b)\nupdate { param = param - a * b * grad }\n"
    assert_error(tmp_path, capsys, text, 2, 7, "`as (...)` destructures a tuple")


# -- the update block ----------------------------------------------------------------------------


def test_missing_update_block(tmp_path, capsys):
    text = "optimizer T\nhyper lr = 0.1\n"
    assert_error(tmp_path, capsys, text, 1, 11, "optimizer T has no `update { ... }` block")


def test_two_update_blocks(tmp_path, capsys):
    text = "optimizer T\nupdate { param = param - grad }\nupdate { param = param + grad }\n"
    assert_error(tmp_path, capsys, text, 3, 1, "a spec has exactly one update block; this is a second one")


def test_update_that_never_assigns_param(tmp_path, capsys):
    text = body("""
        buf = buf + grad
    """)
    assert_error(tmp_path, capsys, text, 5, 1, "the update never assigns `param`")


# -- the command line itself ---------------------------------------------------------------------


def test_module_entry_point_prints_the_error_and_exits_1(tmp_path):
    path = tmp_path / "bad.opt"
    path.write_text(body("""
        buf = buf + grad
        param = param - lr * bfu
    """))
    result = subprocess.run([sys.executable, "-m", "optdsl.cli", "check", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}:7:26: error: undefined name 'bfu'\n"
        "        param = param - lr * bfu\n"
        "                             ^\n"
    )


def test_every_broken_spec_is_reported_and_good_ones_still_pass(tmp_path, capsys):
    good = tmp_path / "good.opt"
    good.write_text(body("""
        buf = buf + grad
        param = param - lr * buf
    """))
    bad = tmp_path / "bad.opt"
    bad.write_text(body("param = param - lr * nope"))
    status = cli.main(["check", str(bad), str(good), str(tmp_path / "missing.opt")])
    out = capsys.readouterr()
    assert status == 1
    assert f"{good}: ok (T)" in out.out
    assert f"{bad}:6:26: error: undefined name 'nope'" in out.err
    assert f"{tmp_path / 'missing.opt'}: error: cannot read spec: No such file or directory" in out.err
