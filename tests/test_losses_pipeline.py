"""Loss rules, the compiler side: generated/ is in sync with specs/losses/, output is
deterministic, `optdsl.load`, nn.Module signatures mirror torch.nn, constructor and argument
validation, and spec errors reported as `file:line:col: error:` without a traceback."""

from __future__ import annotations

import contextlib
import inspect
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import optdsl
from loss_records import LOSSES
from optdsl.cli import main as cli_main
from optdsl.compiler import compile_file

ROOT = Path(__file__).resolve().parent.parent
LOSS_SPECS = sorted((ROOT / "specs" / "losses").glob("*.opt"))


def test_generated_losses_are_in_sync_with_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    relative = [f"specs/losses/{spec.name}" for spec in LOSS_SPECS]
    assert cli_main(["compile", "-q", "-o", str(tmp_path), *relative]) == 0
    for spec in LOSS_SPECS:
        committed = ROOT / "generated" / f"{spec.stem}.py"
        assert committed.exists(), f"{committed} missing: run `optdsl compile specs/losses/*.opt`"
        assert (tmp_path / f"{spec.stem}.py").read_bytes() == committed.read_bytes(), f"{committed} is stale: recompile"


def test_every_loss_spec_has_a_record():
    assert sorted(info.module for info in LOSSES) == sorted(spec.stem for spec in LOSS_SPECS)


def test_output_is_deterministic():
    spec = ROOT / "specs" / "losses" / "cross_entropy.opt"
    first = compile_file(spec, display_path="specs/losses/cross_entropy.opt").source
    again = subprocess.run(
        [sys.executable, "-c", "import sys; from optdsl.compiler import compile_file; "
         f"sys.stdout.write(compile_file({str(spec)!r}, display_path='specs/losses/cross_entropy.opt').source)"],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "321", "PATH": "",
                                                         "PYTHONPATH": str(ROOT)},
    ).stdout
    assert first == again


def test_load_returns_the_loss_module_class():
    cls = optdsl.load(ROOT / "specs" / "losses" / "huber.opt")
    assert issubclass(cls, torch.nn.Module) and cls.__name__ == "HuberLoss"
    x, t = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    expected = torch.nn.functional.huber_loss(x, t, delta=0.5)
    assert torch.allclose(cls(delta=0.5)(x, t), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("info", [i for i in LOSSES if i.torch_class], ids=lambda i: i.module)
def test_module_mirrors_torch_nn(info):
    """Same constructor arguments (minus torch's deprecated size_average/reduce), same defaults,
    same forward arguments; an instance gives torch's value and gradient."""
    module = info.load()
    ours, theirs = getattr(module, info.cls), getattr(torch.nn, info.torch_class)
    mine = [(n, p.default) for n, p in inspect.signature(ours.__init__).parameters.items() if n not in ("self", "backend")]
    torch_params = [(n, p.default) for n, p in inspect.signature(theirs.__init__).parameters.items()
                    if n not in ("self", "size_average", "reduce")]
    assert [n for n, _ in mine] == [n for n, _ in torch_params]
    assert [d for _, d in mine] == [d for _, d in torch_params]
    assert list(inspect.signature(ours.forward).parameters) == list(inspect.signature(theirs.forward).parameters)
    x = info.make(torch.float64, torch.Generator().manual_seed(0), 1.0)
    kwargs = {k: v for k, v in x.items() if k in dict(mine)}
    forward = {k: v for k, v in x.items() if k not in kwargs}
    for backend in ("torch", "triton"):
        a_in = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in forward.items()}
        b_in = {k: (v.clone().requires_grad_() if v.is_floating_point() else v) for k, v in forward.items()}
        a = ours(**kwargs, backend=backend)(**a_in)
        b = theirs(**kwargs)(**b_in)
        assert torch.allclose(a, b, rtol=1e-10, atol=0)
        a.backward()
        b.backward()
        for k in a_in:
            if a_in[k].is_floating_point():
                assert torch.allclose(a_in[k].grad, b_in[k].grad, rtol=1e-10, atol=1e-14), k
    assert isinstance(ours(**kwargs), torch.nn.Module)
    for name in kwargs:  # optional tensors are buffers, as in torch (they follow .to(device))
        assert name in dict(ours(**kwargs).named_buffers())


def test_constructor_and_call_validation():
    from generated.cross_entropy import CrossEntropyLoss, cross_entropy_loss
    from generated.huber import HuberLoss

    cases = [
        (lambda: CrossEntropyLoss(reduction="avg"), "reduction"),
        (lambda: CrossEntropyLoss(label_smoothing=1.5), "label_smoothing"),
        (lambda: CrossEntropyLoss(label_smoothing="0.1"), "label_smoothing"),
        (lambda: CrossEntropyLoss(weight=[1.0, 2.0]), "weight"),
        (lambda: CrossEntropyLoss(backend="gpu"), "backend"),
        (lambda: HuberLoss(delta=0), "delta"),
        (lambda: HuberLoss(delta=True), "delta"),
        (lambda: cross_entropy_loss(torch.randn(3, 4), torch.tensor([0, 1])), "target"),
        (lambda: cross_entropy_loss(torch.randn(3, 4), torch.tensor([0.0, 1.0, 2.0])), "target"),
        (lambda: cross_entropy_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.ones(5)), "weight"),
        (lambda: cross_entropy_loss(torch.randn(3, 4, 2), torch.tensor([0, 1, 2])), "input"),
        (lambda: HuberLoss()(torch.randn(3, 4), torch.randn(2, 4)), "target"),
        (lambda: HuberLoss()(torch.tensor([1, 2]), torch.randn(2)), "input"),
    ]
    for make, name in cases:
        with pytest.raises(ValueError, match=name):
            make()


def test_gradient_reaches_broadcast_and_low_precision_inputs():
    """A broadcast target gets its gradient summed back to its own shape; float16 inputs give a
    float16 loss and gradients (math in float32)."""
    from generated.mse import mse_loss

    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for backend in ("torch", "triton"):
        gx, gt = torch.autograd.grad(mse_loss(x, t, backend=backend), (x, t))
        ex, et = torch.autograd.grad(torch.nn.functional.mse_loss(x, t.expand(3, 4)), (x, t))
        assert gt.shape == (4,) and torch.allclose(gt, et, rtol=1e-12) and torch.allclose(gx, ex, rtol=1e-12)
    h = torch.randn(8, dtype=torch.float16, requires_grad=True)
    out = mse_loss(h, torch.zeros(8, dtype=torch.float16), backend="triton")
    (g,) = torch.autograd.grad(out, h)
    assert out.dtype == torch.float16 and g.dtype == torch.float16
    assert torch.allclose(g.float(), 2 * h.detach().float() / 8, rtol=1e-3)


# -- spec errors --------------------------------------------------------------------------------

HEAD = 'loss T\ninput input: logits differentiable\ninput target: index\n'
ERRORS = [
    ('loss T\ninput input: logit differentiable\nvalue { loss = input }\n', "unknown role 'logit'", 2, 14),
    ('loss T\ninput input: prediction\nvalue { loss = input }\n', "no differentiable input", 2, 7),
    (HEAD + 'value { loss = log_softmax(input) }\n', "one number per row", 4, 9),
    (HEAD + 'value { loss = sum(target) }\n', "must vary by class", 4, 20),
    (HEAD + 'value { x = sum(input) }\n', "must assign `loss`", 4, 1),
    (HEAD + 'value { if true { loss = 1 } }\n', "`if` is not available", 4, 9),
    (HEAD + 'value { loss = sum(inputs) }\n', "undefined name 'inputs'", 4, 20),
    (HEAD + 'value { loss = sum(grad) }\n', "belongs to optimizer rules", 4, 20),
    (HEAD + 'value {\n  loss = logsumexp(input)\n  mean_weight = sum(input)\n}\n', "may not depend on a differentiable", 6, 3),
    (HEAD + 'reduction "avg"\nvalue { loss = logsumexp(input) }\n', "unknown reduction 'avg'", 4, 11),
    (HEAD + 'hyper flag = true\nvalue { loss = logsumexp(input) }\n', "flag", 4, 7),
    ('loss T\ninput input prediction differentiable\nvalue { loss = input }\n', "unexpected name 'prediction'", 2, 13),
    ('loss T\ninput input: prediction differentiable\ninput t: index differentiable\nvalue { loss = input }\n',
     "cannot be differentiable", 3, 7),
    (HEAD + 'value { loss = sum(onehot(input)) }\n', "onehot() takes an `index` input", 4, 27),
    (HEAD + 'value {\n  a = 1\n  a = 2\n  loss = logsumexp(input) * a\n}\n', "already assigned", 6, 3),
    (HEAD + 'value {\n  a = 1\n  loss = logsumexp(input)\n}\n', "never used", 5, 3),
    (HEAD + 'value { loss = logsumexp(input) }\nvalue { loss = 1 }\n', "second one", 5, 1),
    ('loss float\ninput input: prediction differentiable\nvalue { loss = input }\n', "float", 1, 6),
    (HEAD + 'hyper k = 1 where input > 0\nvalue { loss = logsumexp(input) }\n', "hyperparameters only", 4, 19),
    (HEAD + 'def f(x) = f(x)\nvalue { loss = logsumexp(input) * f(1) }\n', "recursive", 4, 12),
    (HEAD + 'value { loss = sum(input > 0) }\n', "expected a number, found a condition", 4, 26),
    (HEAD + 'value { loss = where(target > 0, 1, 0) }\n', "does not depend on any differentiable input", 4, 9),
    (HEAD + 'value {\n  loss = logsumexp(input)\n  mean_weight = 2\n}\n', "is a constant", 6, 3),
]


def run_cli(text, command="compile"):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.opt"
        path.write_text(text)
        out = Path(tmp) / "out"
        err = io.StringIO()
        argv = ["compile", "-q", "-o", str(out), str(path)] if command == "compile" else [command, str(path)]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            status = cli_main(argv)
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        return status, err.getvalue().replace(str(Path(tmp)) + "/", ""), written


@pytest.mark.parametrize("text,fragment,line,column", ERRORS, ids=[e[1][:30] for e in ERRORS])
def test_spec_errors_are_located(text, fragment, line, column):
    status, err, written = run_cli(text)
    assert status == 1 and written == [], err
    assert "Traceback" not in err and "internal compiler error" not in err, err
    first = err.splitlines()[0]
    assert first.startswith(f"case.opt:{line}:{column}: error: "), err
    assert fragment in first, err
    assert err.splitlines()[2].strip() == "^", err  # the source line, then the caret


def test_check_and_verify_commands_accept_losses(capsys):
    spec = str(ROOT / "specs" / "losses" / "bradley_terry.opt")
    assert cli_main(["check", spec]) == 0
    assert cli_main(["verify", spec]) == 0
    out = capsys.readouterr().out
    assert "BradleyTerryLoss" in out and "float64" in out and "MISMATCH" not in out


def test_loss_keywords_stay_names_in_optimizer_specs():
    """`input`, `value`, `reduction`, `loss`, `differentiable` are keywords only in loss specs."""
    text = ("optimizer Kw\nhyper lr = 0.1 where lr > 0\nupdate {\n    loss = grad * 2\n    value = loss + 1\n"
            "    reduction = value * 2\n    input = reduction + 1\n    differentiable = input * 1\n"
            "    param = param - lr * differentiable\n}\n")
    status, err, written = run_cli(text)
    assert status == 0 and written and not err, err
