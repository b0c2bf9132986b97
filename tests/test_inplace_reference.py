"""The in-place CPU reference (`_reference_inplace`, optdsl/inplace.py) equals the copy-back path.

Contiguous float32/float64 tensors take `_reference_inplace`; a non-contiguous parameter with the
same values takes `_reference_into` (convert, run `_reference`, copy back). Both must agree for
every elementwise spec, with default hyperparameters, with every default-0 hyperparameter set (the
terms the in-place path skips while they are 0) and with each flag flipped. Specs whose states
alias each other get no in-place reference.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import torch

from optdsl.compiler import load_module

ROOT = Path(__file__).resolve().parent.parent
INPLACE = sorted(p.stem for p in (ROOT / "generated").glob("*.py") if "def _reference_inplace" in p.read_text())


def _class(module):
    return next(v for v in vars(module).values() if isinstance(v, type) and issubclass(v, torch.optim.Optimizer)
                and v is not torch.optim.Optimizer and v.__module__ == module.__name__)


def _settings(cls):
    """Default keyword arguments, the default-0 numbers set to 0.1, and each flag flipped."""
    defaults = {name: p.default for name, p in inspect.signature(cls).parameters.items()
                if name not in ("params", "backend") and p.default is not inspect.Parameter.empty}
    optional = {name: 0.1 for name, value in defaults.items()
                if not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0}
    flags = [name for name, value in defaults.items() if isinstance(value, bool)]
    settings = [{}, optional]
    for flag in flags:
        settings += [{flag: not defaults[flag]}, dict(optional, **{flag: not defaults[flag]})]
    return settings


def _run(module, kwargs, contiguous, dtype, monkeypatch):
    calls = []
    inplace = module._reference_inplace
    monkeypatch.setattr(module, "_reference_inplace", lambda *a: calls.append(1) or inplace(*a))
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(7, 300, generator=gen, dtype=dtype)
    param = values.clone() if contiguous else torch.empty(300, 7, dtype=dtype).t().copy_(values)
    param.requires_grad_()
    opt = _class(module)([param], backend="torch", **kwargs)
    for _ in range(3):
        param.grad = torch.randn(7, 300, generator=gen, dtype=dtype)
        opt.step()
    states = {k: v for k, v in opt.state[param].items() if isinstance(v, torch.Tensor)}
    # The path under test ran (a state kept in another dtype, `m3: float32`, takes the copy-back path).
    assert bool(calls) == (contiguous and all(v.dtype == dtype for k, v in states.items() if k != "step"))
    return param.detach(), states


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("spec", INPLACE)
def test_inplace_reference_matches_copy_back_path(spec, dtype, monkeypatch):
    module = importlib.import_module(f"generated.{spec}")
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for kwargs in _settings(_class(module)):
        try:
            _class(module)([torch.zeros(1, requires_grad=True)], **kwargs)
        except ValueError:
            continue  # an invalid combination (nesterov without momentum)
        p_in, s_in = _run(module, kwargs, True, dtype, monkeypatch)
        monkeypatch.undo()
        p_copy, s_copy = _run(module, kwargs, False, dtype, monkeypatch)
        monkeypatch.undo()
        torch.testing.assert_close(p_in, p_copy, **tolerance, msg=f"{spec} {kwargs}: param")
        assert s_in.keys() == s_copy.keys()
        for name in s_in:
            torch.testing.assert_close(s_in[name], s_copy[name], **tolerance, msg=f"{spec} {kwargs}: {name}")


def test_the_measured_rules_have_an_inplace_reference():
    assert {"adam", "adamw", "sgd"} <= set(INPLACE)


READ_AFTER_WRITE = """
optimizer ReadAfterWrite \"\"\"A local that holds a state's old tensor is read after the state is reassigned.\"\"\"
hyper lr = 0.1
state s = 1
update {
    old = s
    s = s + grad
    param = param - lr * (s - old)
}
"""


def test_a_rule_that_reads_an_overwritten_state_keeps_the_copy_back_path(tmp_path):
    path = tmp_path / "read_after_write.opt"
    path.write_text(READ_AFTER_WRITE)
    module = load_module(path)
    assert not hasattr(module, "_reference_inplace")
    param = torch.zeros(5, requires_grad=True)
    opt = _class(module)([param], backend="torch")
    param.grad = torch.full((5,), 2.0)
    opt.step()
    assert torch.equal(opt.state[param]["s"], torch.full((5,), 3.0))
    assert torch.allclose(param.detach(), torch.full((5,), -0.2))
