"""Compiler behaviour the torch.optim mirrors rely on: `state step = none`, flags read after an
`if`, module names taken from the spec file, and constant-initialised states on complex params."""

import textwrap

import pytest
import torch

import optdsl
from optdsl.compiler import compile_file
from optdsl.errors import SpecError

HEAD = '''optimizer Demo
hyper lr = 0.1
hyper flip = false
hyper init = 0.5
'''


def _write(tmp_path, body, name="demo_spec.opt"):
    path = tmp_path / name
    path.write_text(HEAD + textwrap.dedent(body))
    return path


def test_state_step_none_keeps_no_step_count(tmp_path):
    path = _write(tmp_path, """
        state step = none
        state buf = 0
        update {
            buf = buf + grad
            param = param - lr * buf
        }
    """)
    cls = optdsl.load(path)
    p = torch.ones(3, requires_grad=True)
    opt = cls([p])
    p.grad = torch.ones(3)
    opt.step()
    assert set(opt.state[p]) == {"buf"}


@pytest.mark.parametrize("body, message", [
    ("state step = 0\nupdate { param = param - lr * grad }", "state step = none"),
    ("state step = none\nupdate { param = param - lr * grad * step }", "no step count"),
])
def test_state_step_errors(tmp_path, body, message):
    with pytest.raises(SpecError, match=message):
        compile_file(_write(tmp_path, body))


def test_flag_is_still_a_condition_after_an_if(tmp_path):
    path = _write(tmp_path, """
        update {
            if lr > 0 { d = grad } else { d = -grad }
            if flip { d = -d }
            param = param - lr * d
        }
    """)
    compile_file(path)


def test_module_is_named_after_the_spec_file(tmp_path):
    assert compile_file(_write(tmp_path, "update { param = param - lr * grad }", "my_rule.opt")).module_name == "my_rule"


def test_constant_state_on_complex_param_fills_both_parts(tmp_path):
    cls = optdsl.load(_write(tmp_path, """
        state acc = init
        update {
            acc = acc + grad^2
            param = param - lr * grad / sqrt(acc)
        }
    """))
    p = torch.zeros(2, dtype=torch.complex64, requires_grad=True)
    opt = cls([p])
    p.grad = torch.zeros(2, dtype=torch.complex64)
    opt.step()
    assert torch.equal(opt.state[p]["acc"], torch.full((2,), complex(0.5, 0.5), dtype=torch.complex64))
