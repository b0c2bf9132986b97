"""The compiler as a whole: generated/ is in sync with specs/, output is deterministic, the
planned IR equals a plain fp64 interpretation of each spec, and `optdsl verify` passes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optdsl
from optdsl.cli import main as cli_main
from optdsl.compiler import compile_file

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "specs").glob("*.opt"))
SPEC_IDS = [p.stem for p in SPECS]


def test_generated_is_in_sync_with_specs(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    relative = [f"specs/{spec.name}" for spec in SPECS]
    assert cli_main(["compile", "-q", "-o", str(tmp_path), *relative]) == 0
    for spec in SPECS:
        name = compile_file(spec).module_name
        committed = ROOT / "generated" / f"{name}.py"
        assert committed.exists(), f"{committed} missing: run `optdsl compile specs/*.opt`"
        assert (tmp_path / f"{name}.py").read_bytes() == committed.read_bytes(), f"{committed} is stale: recompile"


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_output_is_deterministic(spec):
    first = compile_file(spec, display_path=f"specs/{spec.name}").source
    again = subprocess.run(
        [sys.executable, "-c", "import sys; from optdsl.compiler import compile_file; "
         f"sys.stdout.write(compile_file({str(spec)!r}, display_path='specs/{spec.name}').source)"],
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
    ).stdout
    assert first == again


@pytest.mark.parametrize("spec", SPECS, ids=[s.stem for s in SPECS])
def test_verify_full_matrix_passes(spec, capsys):
    # The whole `optdsl verify` matrix (configs x dtypes x tensors x behaviours), 4-10 s per spec.
    assert cli_main(["verify", str(spec)]) == 0, capsys.readouterr().out


def test_generated_module_imports_only_torch_and_triton():
    for module in (ROOT / "generated").glob("*.py"):
        imports = {line.split()[1].split(".")[0] for line in module.read_text().splitlines()
                   if line.startswith(("import ", "from ")) and not line.startswith("from __future__")}
        assert imports <= {"math", "os", "torch", "triton"}, f"{module.name} imports {imports}"


def test_load_returns_the_optimizer_class():
    cls = optdsl.load(ROOT / "specs" / "adam.opt")
    assert issubclass(cls, torch.optim.Optimizer) and cls.__name__ == "Adam"
    param = torch.ones(3, requires_grad=True)
    opt = cls([param], lr=0.1)
    param.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(param, torch.full((3,), 0.9))


def test_generated_module_works_without_triton():
    # A CPU-only user without triton installed still gets the reference implementation.
    code = (
        "import sys; sys.modules['triton'] = None; sys.modules['triton.language'] = None\n"
        "import torch\n"
        "from generated.adam import Adam\n"
        "p = torch.ones(3, requires_grad=True); opt = Adam([p], lr=0.1)\n"
        "p.grad = torch.ones(3); opt.step(); print(p.tolist())\n"
        "try:\n"
        "    Adam([p], backend='triton').step()\n"
        "except RuntimeError as exc:\n"
        "    print('error:', exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    values = eval(result.stdout.splitlines()[0])
    assert values == pytest.approx([0.9] * 3, rel=1e-6)
    assert "needs the triton package" in result.stdout


SWAP_SPEC = """
optimizer Swap \"\"\"Two states that trade values every step (checks write-back order and aliasing).\"\"\"
hyper lr = 0.1
state a = 1
state b = 2
update {
    old_a = a
    a = b
    b = old_a + grad
    param = param - lr * (a + b)
}
"""


@pytest.mark.parametrize("numel", [5, 70_000])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_states_that_alias_each_other_are_written_back_correctly(tmp_path, numel, backend):
    spec = tmp_path / "swap.opt"
    spec.write_text(SWAP_SPEC)
    cls = optdsl.load(spec)
    param = torch.zeros(numel, requires_grad=True)
    opt = cls([param], backend=backend)
    a, b, p = torch.ones(numel), torch.full((numel,), 2.0), torch.zeros(numel)
    for step in range(3):
        grad = torch.full((numel,), float(step + 1))
        param.grad = grad
        opt.step()
        a, b = b, a + grad
        p = p - 0.1 * (a + b)
        assert torch.equal(opt.state[param]["a"], a) and torch.equal(opt.state[param]["b"], b)
        assert torch.allclose(param.detach(), p)


CONDITION_LOCALS_SPEC = """
optimizer ConditionLocals \"\"\"Conditions bound to names: one on the host picks the kernel, one per element.\"\"\"
hyper lr = 0.1
hyper momentum = 0.0
state buf = 0
update {
    heavy = momentum > 0.5 and lr < 1
    if heavy {
        buf = momentum * buf + grad
    } else {
        buf = grad
    }
    far = abs(param) > 1 or not heavy
    param = param - lr * where(far, buf, 0.5 * buf)
}
"""


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_conditions_bound_to_names(tmp_path, momentum, backend):
    spec = tmp_path / "condition_locals.opt"
    spec.write_text(CONDITION_LOCALS_SPEC)
    cls = optdsl.load(spec)
    start = torch.linspace(-2, 2, 9)
    param = start.clone().requires_grad_()
    opt = cls([param], momentum=momentum, backend=backend)
    buf, p = torch.zeros(9), start.clone()
    for step in range(3):
        grad = torch.linspace(-1, 1, 9) * (step + 1)
        param.grad = grad
        opt.step()
        heavy = momentum > 0.5
        buf = momentum * buf + grad if heavy else grad
        far = (p.abs() > 1) | (not heavy)
        p = p - 0.1 * torch.where(far, buf, 0.5 * buf)
        assert torch.allclose(opt.state[param]["buf"], buf) and torch.allclose(param.detach(), p)


UNSET_SPEC = """
optimizer Unset \"\"\"A hyperparameter that defaults to none, and the size of the tensor.\"\"\"
hyper lr = 0.1
hyper scale = none                 where scale == none or scale > 0
hyper eps = (none, 0.5) as (eps1, eps2)
update {
    s = where(scale == none, 1 / numel, scale)
    floor = where(eps1 != none, eps1, machine_eps)
    param = param - lr * s * max(grad, floor + eps2)
}
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_unset_hyperparameters_and_tensor_values(tmp_path, backend):
    """`none` defaults reach the rule as `x == none` flags; `numel`/`machine_eps` are per tensor,
    and a rule that reads them runs on the staged runtime even without reductions."""
    spec = tmp_path / "unset.opt"
    spec.write_text(UNSET_SPEC)
    cls = optdsl.load(spec)
    for kwargs, scale, floor in [({}, None, None), ({"scale": 2.0, "eps": (0.25, 0.5)}, 2.0, 0.25)]:
        params = [torch.zeros(4, requires_grad=True), torch.zeros(2, 3, requires_grad=True)]
        opt = cls(params, backend=backend, **kwargs)
        grads = [torch.linspace(-1, 2, 4), torch.linspace(0, 3, 6).reshape(2, 3)]
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        for p, g in zip(params, grads):
            s = 1 / g.numel() if scale is None else scale
            f = torch.finfo(torch.float32).eps if floor is None else floor
            assert torch.allclose(p.detach(), -0.1 * s * torch.clamp(g, min=f + 0.5))
    assert cls([torch.zeros(1)]).defaults["eps"] == (None, 0.5)
    with pytest.raises(ValueError, match=r"Invalid scale: -1\.0 \(requires scale == none or scale > 0\)"):
        cls([torch.zeros(1)], scale=-1.0)
    with pytest.raises(ValueError, match="Invalid eps"):
        cls([torch.zeros(1)], eps=(None, "x"))
