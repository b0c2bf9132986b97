"""`optdsl verify` must fail when something is wrong: plant bugs and watch it catch them."""

import io
from pathlib import Path

import sympy

from optdsl import codegen
from optdsl import plan as plan_stage
from optdsl import printers
from optdsl.verify import verify_file

ADAM = Path(__file__).resolve().parent.parent / "specs" / "adam.opt"


def _run(**kwargs):
    out = io.StringIO()
    ok = verify_file(ADAM, out=out, quick=True, **kwargs)
    return ok, out.getvalue()


def test_clean_spec_passes():
    ok, report = _run()
    assert ok, report
    assert "0 failed" in report


def test_wrong_hoisting_is_caught(monkeypatch):
    original = plan_stage.plan_variant

    def off_by_a_little(lowered, variant):
        kernel = original(lowered, variant)
        # A host scalar off by 1e-6: what a wrong algebraic rewrite would look like.
        symbol, expr = kernel.host_defs[-1]
        kernel.host_defs[-1] = (symbol, expr * sympy.Float(1.000001))
        return kernel

    monkeypatch.setattr(plan_stage, "plan_variant", off_by_a_little)
    ok, report = _run()
    assert not ok
    assert "planned IR vs spec (fp64)" in report and "FAIL" in report
    failing = [line for line in report.splitlines() if "FAIL" in line]
    assert any("planned IR" in line for line in failing)


def test_wrong_kernel_function_is_caught(monkeypatch):
    monkeypatch.setattr(codegen, "TritonPrinter", _SqrtIsOff)
    ok, report = _run()
    assert not ok
    assert any("triton vs reference" in line for line in report.splitlines() if "FAIL" in line)


class _SqrtIsOff(printers.TritonPrinter):
    """A printer bug: the kernel's sqrt is 1% off (the IR is right; only the kernel is wrong)."""

    def _print_Pow(self, expr, rational=False):
        text = super()._print_Pow(expr, rational)
        return text.replace("tl.sqrt(", "1.01 * tl.sqrt(")


# --- specs with reductions, row/column/scalar state or `loss` -------------------------------------

LAMB = ADAM.parent / "lamb.opt"
SPS = ADAM.parent / "sps.opt"


def test_staged_specs_pass_quick_verify():
    for spec in (LAMB, SPS, ADAM.parent / "adafactor.opt", ADAM.parent / "nadam.opt"):
        out = io.StringIO()
        assert verify_file(spec, out=out, quick=True), out.getvalue()
        assert "reference vs spec (fp64)" in out.getvalue()


def test_a_wrong_reduction_in_the_reference_is_caught(monkeypatch):
    # The interpretation's norm off by 1e-6 relative: the generated reference no longer agrees.
    from optdsl import interpret

    original = interpret._reduce

    def off(base, args, over, shape):
        value = original(base, args, over, shape)
        return value * 1.000001 if base == "norm" else value

    monkeypatch.setattr(interpret, "_reduce", off)
    out = io.StringIO()
    assert not verify_file(LAMB, out=out, quick=True)
    assert "reference vs spec (fp64)" in out.getvalue() and "FAIL" in out.getvalue()


def test_a_wrong_global_reduction_is_caught(monkeypatch):
    from optdsl import interpret

    parts = dict(interpret._GLOBAL_PARTS)
    contribution, combine = parts["sum"]
    parts["sum"] = (lambda x: contribution(x) * 1.000001, combine)
    monkeypatch.setattr(interpret, "_GLOBAL_PARTS", parts)
    out = io.StringIO()
    assert not verify_file(SPS, out=out, quick=True)
