"""Loss rules, codegen stage: a lowered loss (`loss_ir.LossIR`) → one Python module holding the
readable PyTorch reference (forward as the spec's statements, backward as the SymPy gradient),
the Triton forward and backward kernels, a `torch.autograd.Function`, a functional form and an
`nn.Module` that mirrors the matching `torch.nn` loss class.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import jinja2
import sympy
from sympy.printing.precedence import precedence

from . import __version__
from .codegen import _comment_text, _python_string, snake_case
from .loss_ir import ELEMENT, HOST, ROW, LossIR
from .printers import HOST_HELPERS, HOST_HELPER_DEPENDENCIES, TRITON_HELPERS, HostPrinter, TritonPrinter, _Common, float_literal

LOSS_TRITON_HELPERS = {
    "_softplus": '''
@_jit
def _softplus(x):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|.
    return tl.maximum(x, 0.0) + _log1p(tl.exp(-tl.abs(x)))
''',
    "_powf": '''
@_jit
def _powf(x, y):
    # x^y for a non-integer or symbolic exponent, with torch's values at x = 0 (0^0 = 1).
    r = tl.exp(y * tl.log(x))
    return tl.where(x == 0, tl.where(y == 0, 1.0, tl.where(y > 0, 0.0, float("inf"))), r)
''',
    "_heaviside": '''
@_jit
def _heaviside(x):
    # d max(a, b) / da: 1 where a > b, 1/2 at a tie (as torch.maximum), 0 elsewhere.
    return tl.where(x > 0, 1.0, tl.where(x == 0, 0.5, 0.0))
''',
    "_lse_update": '''
@_jit
def _lse_update(m, s, x):
    # Online log-sum-exp, one lane per column: m is the running max, s the sum of exp(x - m).
    # A lane that has seen only -inf keeps s = 0 (exp(-inf - -inf) would be nan).
    m_new = tl.maximum(m, x)
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, s * tl.exp(m - shift) + tl.exp(x - shift)
''',
    "_lse_finish": '''
@_jit
def _lse_finish(m, s):
    # Combine the lanes: max + log(sum(s * exp(m - max))); -inf for a row of -inf.
    top = tl.max(m, axis=0)
    shift = tl.where(top == float("-inf"), 0.0, top)
    return shift + tl.log(tl.sum(s * tl.exp(m - shift), axis=0))
''',
}
HELPER_DEPENDENCIES = {"_softplus": ("_log1p",)}
# Reference (torch) helpers; names differ from the Triton helpers above (one module namespace).
TORCH_HELPERS = {
    "_torch_softplus": "def _torch_softplus(x):\n    # log(1 + exp(x)) without overflow, differentiable: logaddexp(x, 0)\n"
                       "    return torch.logaddexp(x, torch.zeros_like(x))\n",
    "_torch_heaviside": "def _torch_heaviside(x):\n    return (x > 0).to(x.dtype) + 0.5 * (x == 0).to(x.dtype)\n",
    "_host_softplus": "def _host_softplus(x):\n    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))\n",
}


def _fp32_exact(value: float) -> bool:
    try:
        return struct.unpack("f", struct.pack("f", value))[0] == value
    except OverflowError:
        return False


class _Kinds:
    """What is a tensor in the reference: anything that reads an input, a reduction or a
    per-row/per-element local. Hyperparameters and `num_classes` are Python numbers."""

    def __init__(self, kinds: dict):
        self.kinds = kinds

    def is_tensor(self, expr) -> bool:
        return any(self.kinds.get(s, HOST) != HOST for s in expr.free_symbols)


class LossTritonPrinter(TritonPrinter):
    """SymPy → Triton for loss kernels: loss functions, and constants that float32 cannot hold
    exactly are read from the hyperparameter tensor (so float64 kernels keep them exact)."""

    def __init__(self, constants: list):
        super().__init__()
        self.constants = constants  # shared by every kernel of the module
        self.used_constants: set[int] = set()

    def _constant(self, value: float) -> str:
        if _fp32_exact(value) or value != value or value in (float("inf"), float("-inf")):
            return float_literal(value)
        if value not in self.constants:
            self.constants.append(value)
        index = self.constants.index(value)
        self.used_constants.add(index)
        return f"_k{index}"

    def _print_Float(self, expr):
        return self._constant(float(expr))

    def _print_Rational(self, expr):
        return self._constant(float(expr))

    def _print_Pi(self, expr):
        return self._constant(3.141592653589793)

    def _print_Pow(self, expr, rational=False):
        exp = expr.exp
        if exp.is_Integer or exp in (sympy.Rational(1, 2), sympy.Rational(-1, 2)):
            return super()._print_Pow(expr, rational)
        self.helpers.add("_powf")
        return f"_powf({self._print(expr.base)}, {self._print(exp)})"

    def _print_Function(self, expr):
        name = type(expr).__name__
        if name == "softplus":
            self.helpers.update(("_softplus", "_log1p"))
            return f"_softplus({self._print(expr.args[0])})"
        if name == "onehot":
            return f"tl.where(cols == {self._print(expr.args[0])}, 1.0, 0.0)"
        if name == "Heaviside":
            self.helpers.add("_heaviside")
            return f"_heaviside({self._print(expr.args[0])})"
        if name == "DiracDelta":
            return "0.0"
        return super()._print_Function(expr)

    _print_Heaviside = _print_Function
    _print_DiracDelta = _print_Function


class TorchPrinter(_Common):
    """SymPy → readable PyTorch over the reference's tensors ([N, C] per element, [N, 1] per row in
    row losses); host subexpressions print as Python floats with the IEEE host helpers."""

    TORCH = {"exp": "torch.exp", "log": "torch.log", "log1p": "torch.log1p", "sigmoid": "torch.sigmoid",
             "tanh": "torch.tanh", "sign": "torch.sign"}

    def __init__(self, kinds: _Kinds):
        super().__init__()
        self.kinds = kinds
        self.host = HostPrinter()

    def _host(self, expr):
        text = self.host._print(expr)
        self.helpers |= self.host.helpers
        return text

    def _print_Function(self, expr):
        name = type(expr).__name__
        if not self.kinds.is_tensor(expr):
            if name == "softplus":
                self.helpers.add("_host_softplus")
                return f"_host_softplus({self._host(expr.args[0])})"
            if name in ("Heaviside", "DiracDelta", "onehot"):
                raise NotImplementedError(name)
            return self._host(expr)
        args = [self._print(a) for a in expr.args]
        if name in self.TORCH:
            return f"{self.TORCH[name]}({args[0]})"
        if name == "softplus":
            self.helpers.add("_torch_softplus")
            return f"_torch_softplus({args[0]})"
        if name == "onehot":
            return f"(_classes == {args[0]}).to(_dtype)"
        if name == "Heaviside":
            self.helpers.add("_torch_heaviside")
            return f"_torch_heaviside({args[0]})"
        if name == "DiracDelta":
            return "0.0"
        if name == "atan2":
            return f"torch.atan2({args[0]}, {args[1]})"
        raise NotImplementedError(f"no torch lowering for {name}")

    _print_exp = _print_Function
    _print_log = _print_Function
    _print_sign = _print_Function
    _print_tanh = _print_Function
    _print_atan2 = _print_Function
    _print_Heaviside = _print_Function
    _print_DiracDelta = _print_Function

    def _print_Pow(self, expr, rational=False):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        base, exp = expr.base, expr.exp
        if exp == sympy.Rational(1, 2):
            return f"torch.sqrt({self._print(base)})"
        if exp == sympy.Rational(-1, 2):
            return f"torch.rsqrt({self._print(base)})"
        if exp == -1:
            return f"1 / {self.parenthesize(base, precedence(expr))}"
        if not self.kinds.is_tensor(base):  # host ** tensor
            return f"torch.pow(torch.as_tensor({self._print(base)}, dtype=_dtype), {self._print(exp)})"
        exp_text = str(int(exp)) if exp.is_Integer and exp > 0 else self.parenthesize(exp, precedence(expr))
        return f"{self.parenthesize(base, precedence(expr))} ** {exp_text}"

    def _print_Abs(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        return f"torch.abs({self._print(expr.args[0])})"

    def _minmax(self, expr, fn, bound, host):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        args = list(expr.args)
        tensors = [a for a in args if self.kinds.is_tensor(a)]
        scalars = [a for a in args if not self.kinds.is_tensor(a)]
        text = self._print(tensors[0])
        for a in tensors[1:]:
            text = f"{fn}({text}, {self._print(a)})"
        if scalars:
            scalar = self._print(scalars[0]) if len(scalars) == 1 else f"{host}({', '.join(self._print(s) for s in scalars)})"
            text = f"torch.clamp({text}, {bound}={scalar})"
        return text

    def _print_Max(self, expr):
        return self._minmax(expr, "torch.maximum", "min", "max")

    def _print_Min(self, expr):
        return self._minmax(expr, "torch.minimum", "max", "min")

    def _print_Piecewise(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        *branches, (last, _) = expr.args
        text = self._value(last)
        for value, cond in reversed(branches):
            if self.kinds.is_tensor(cond):
                value_text = self._value(value)
                if not self.kinds.is_tensor(value) and not self._is_tensor_text(text):
                    value_text = f"torch.full((), {value_text}, dtype=_dtype, device=_device)"
                text = f"torch.where({self._print(cond)}, {value_text}, {text})"
            else:
                text = f"({self._value(value)} if {self._print(cond)} else {text})"
        return text

    @staticmethod
    def _is_tensor_text(text):
        return not _is_number_text(text)

    def _value(self, value):
        return float_literal(float(value)) if value.is_Number else self._print(value)

    def _print_Relational(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        return super()._print_Relational(expr)

    def _print_And(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        return "(" + " & ".join(self._print(a) for a in expr.args) + ")"

    def _print_Or(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        return "(" + " | ".join(self._print(a) for a in expr.args) + ")"

    def _print_Not(self, expr):
        if not self.kinds.is_tensor(expr):
            return self._host(expr)
        return f"(~{self._print(expr.args[0])})"


def _is_number_text(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return text.startswith("float(")


# -- kernels ------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    ir: LossIR
    printer: LossTritonPrinter


def _element_loads(ir: LossIR, symbols, indent: str) -> list[str]:
    """Load lines for the per-element inputs among `symbols` (a row loss's loop, or a block)."""
    lines = []
    for inp in ir.element_inputs():
        if ir.symbols[inp.name] not in symbols:
            continue
        if ir.row:
            where = "cols" if inp.role == "class_weight" else "row * C + cols"
            load = f"tl.load({inp.name}_ptr + {where}, mask=cmask, other=0.0).to(DTYPE)"
        else:
            load = f"tl.load({inp.name}_ptr + offsets, mask=mask, other=0.0).to(DTYPE)"
        if inp.default is not None:
            lines += [f"{indent}if HAS_{inp.name}:", f"{indent}    {inp.name} = {load}", f"{indent}else:",
                      f"{indent}    {inp.name} = {float_literal(inp.default)}"]
        else:
            lines.append(f"{indent}{inp.name} = {load}")
    return lines


def _cse_lines(printer, exprs, indent, prefix):
    """CSE over `exprs`: the temporaries' lines and the printed results."""
    temps = sympy.numbered_symbols(prefix, real=True)
    replacements, reduced = sympy.cse(list(exprs), symbols=temps, order="none")
    lines = [f"{indent}{sym} = {printer.doprint(value)}" for sym, value in replacements]
    return lines, [printer.doprint(e) for e in reduced]


def _free(exprs) -> set:
    out = set()
    for e in exprs:
        out |= e.free_symbols
    return out


def _row_preamble(ir: LossIR, exprs_all, indent="    ") -> list[str]:
    lines = ["    row = tl.program_id(0).to(tl.int64)"]
    free = _free(exprs_all)
    if ir.symbols["num_classes"] in free:
        lines.append("    num_classes = C * 1.0")
    for inp in ir.row_inputs():
        if ir.symbols[inp.name] in free:
            lines.append(f"    {inp.name} = tl.load({inp.name}_ptr + row)")
    return lines


def _hyper_loads(ir: LossIR, printer: LossTritonPrinter, used_symbols) -> list[str]:
    lines = []
    for index, hyper in enumerate(ir.spec.hypers):
        if ir.symbols[hyper.name] in used_symbols:
            lines.append(f"    {hyper.name} = tl.load(hyper_ptr + {index})")
    n = len(ir.spec.hypers)
    for index in sorted(printer.used_constants):
        lines.append(f"    _k{index} = tl.load(hyper_ptr + {n + index})  # {float_literal(printer.constants[index])}")
    return lines


def _pass_lines(ir, printer, reductions, index_of, indent="    ") -> list[str]:
    """One loop over the row that accumulates `reductions` (all of one level)."""
    lines = []
    for r in reductions:
        acc = index_of[r.symbol]
        if r.op == "logsumexp":
            lines += [f"{indent}_m{acc} = tl.full([BLOCK_C], float(\"-inf\"), DTYPE)",
                      f"{indent}_s{acc} = tl.zeros([BLOCK_C], DTYPE)"]
        else:
            lines.append(f"{indent}_a{acc} = tl.zeros([BLOCK_C], DTYPE)")
    lines += [f"{indent}for start in range(0, C, BLOCK_C):",
              f"{indent}    cols = start + tl.arange(0, BLOCK_C)",
              f"{indent}    cmask = cols < C"]
    bodies = [r.full for r in reductions]
    lines += _element_loads(ir, _free(bodies), indent + "    ")
    temp_lines, texts = _cse_lines(printer, bodies, indent + "    ", f"_e{index_of[reductions[0].symbol]}_")
    lines += temp_lines
    for r, text in zip(reductions, texts):
        acc = index_of[r.symbol]
        if r.op == "logsumexp":
            lines.append(f"{indent}    _m{acc}, _s{acc} = _lse_update(_m{acc}, _s{acc}, tl.where(cmask, {text}, float(\"-inf\")).to(DTYPE))")
        else:
            lines.append(f"{indent}    _a{acc} += tl.where(cmask, {text}, 0.0)")
    for r in reductions:
        acc = index_of[r.symbol]
        if r.op == "logsumexp":
            printer.helpers.update(("_lse_update", "_lse_finish"))
            lines.append(f"{indent}{r.symbol} = _lse_finish(_m{acc}, _s{acc})")
        else:
            lines.append(f"{indent}{r.symbol} = tl.sum(_a{acc}, axis=0)")
    return lines


def _flags(ir: LossIR) -> list[str]:
    return [f"HAS_{i.name}: tl.constexpr" for i in ir.spec.inputs if i.default is not None]


def _row_forward_kernel(ir: LossIR, printer: LossTritonPrinter, name: str) -> str:
    printer.used_constants = set()
    body = []
    index_of = {r.symbol: k for k, r in enumerate(ir.reductions)}
    levels = sorted({r.level for r in ir.reductions})
    for level in levels:
        group = [r for r in ir.reductions if r.level == level]
        body.append(f"    # pass {level + 1} over the row: {', '.join(f'{r.symbol} ({r.op})' for r in group)}")
        body += _pass_lines(ir, printer, group, index_of)
    outs = [ir.loss] + ([ir.mean_weight] if ir.mean_weight is not None else [])
    temp_lines, texts = _cse_lines(printer, outs, "    ", "_t")
    body += temp_lines
    body.append(f"    tl.store(loss_ptr + row, ({texts[0]}).to(DTYPE))")
    if ir.mean_weight is not None:
        body.append(f"    tl.store(mean_weight_ptr + row, ({texts[1]}).to(DTYPE))")
    for k, r in enumerate(ir.reductions):
        body.append(f"    tl.store(saved_ptr + row * {len(ir.reductions)} + {k}, {r.symbol})")
    used = _free(outs + [r.full for r in ir.reductions])
    pre = _row_preamble(ir, outs + [r.full for r in ir.reductions]) + _hyper_loads(ir, printer, used)
    args = [f"{i.name}_ptr" for i in ir.spec.inputs] + ["hyper_ptr", "loss_ptr"]
    args += ["mean_weight_ptr"] if ir.mean_weight is not None else []
    args += ["saved_ptr", "C"]
    sig = ",\n    ".join(args + _flags(ir) + ["DTYPE: tl.constexpr", "BLOCK_C: tl.constexpr"])
    return f"@_jit\ndef {name}(\n    {sig},\n):\n" + "\n".join(pre + body) + "\n"


def _row_backward_kernel(ir: LossIR, printer: LossTritonPrinter, name: str) -> str:
    printer.used_constants = set()
    body = []
    K = len(ir.reductions)
    for k, r in enumerate(ir.reductions):
        body.append(f"    {r.symbol} = tl.load(saved_ptr + row * {K} + {k})")
    body.append("    coef = tl.load(coef_ptr + row * coef_stride).to(DTYPE)")
    if ir.backward_reductions:
        index_of = {r.symbol: k for k, r in enumerate(ir.backward_reductions)}
        body.append(f"    # backward pass over the row: {', '.join(str(r.symbol) for r in ir.backward_reductions)}")
        body += _pass_lines(ir, printer, ir.backward_reductions, {s: f"b{k}" for s, k in index_of.items()})
    adjoints = list(reversed(ir.adjoints))  # each reads only the adjoints of later reductions
    adj_exprs = [e for _, e in adjoints]
    temp_lines, texts = _cse_lines(printer, adj_exprs, "    ", "_u")
    body.append("    # adjoints of the reductions (dL/dR, through later reductions)")
    body += temp_lines
    body += [f"    {sym} = {text}" for (sym, _), text in zip(adjoints, texts)]
    grads = [ir.grads[n] for n in ir.differentiable]
    body += ["    # gradient pass over the row",
             "    for start in range(0, C, BLOCK_C):",
             "        cols = start + tl.arange(0, BLOCK_C)",
             "        cmask = cols < C"]
    body += _element_loads(ir, _free(grads), "        ")
    temp_lines, texts = _cse_lines(printer, grads, "        ", "_g")
    body += temp_lines
    for n, text in zip(ir.differentiable, texts):
        body.append(f"        tl.store(grad_{n}_ptr + row * C + cols, (coef * ({text})).to(grad_{n}_ptr.dtype.element_ty), mask=cmask)")
    everything = grads + adj_exprs + [r.full for r in ir.backward_reductions] + [r.full for r in ir.reductions]
    pre = _row_preamble(ir, everything) + _hyper_loads(ir, printer, _free(everything))
    args = [f"{i.name}_ptr" for i in ir.spec.inputs] + ["hyper_ptr", "saved_ptr", "coef_ptr", "coef_stride"]
    args += [f"grad_{n}_ptr" for n in ir.differentiable] + ["C"]
    sig = ",\n    ".join(args + _flags(ir) + ["DTYPE: tl.constexpr", "BLOCK_C: tl.constexpr"])
    return f"@_jit\ndef {name}(\n    {sig},\n):\n" + "\n".join(pre + body) + "\n"


def _elementwise_forward_kernel(ir: LossIR, printer: LossTritonPrinter, name: str) -> str:
    printer.used_constants = set()
    outs = [ir.loss] + ([ir.mean_weight] if ir.mean_weight is not None else [])
    body = _element_loads(ir, _free(outs), "    ")
    temp_lines, texts = _cse_lines(printer, outs, "    ", "_t")
    body += temp_lines
    body.append(f"    loss = ({texts[0]}).to(DTYPE)")
    if ir.mean_weight is not None:
        body.append(f"    mean_weight = ({texts[1]}).to(DTYPE)")
    body += ["    if REDUCE:",
             "        # one partial sum per program; the host adds the partials on the device",
             "        tl.store(loss_ptr + pid, tl.sum(tl.where(mask, loss, 0.0), axis=0))"]
    if ir.mean_weight is not None:
        body.append("        tl.store(mean_weight_ptr + pid, tl.sum(tl.where(mask, mean_weight, 0.0), axis=0))")
    body += ["    else:", "        tl.store(loss_ptr + offsets, loss, mask=mask)"]
    pre = ["    pid = tl.program_id(0)",
           "    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
           "    mask = offsets < n_elements"] + _hyper_loads(ir, printer, _free(outs))
    args = [f"{i.name}_ptr" for i in ir.spec.inputs] + ["hyper_ptr", "loss_ptr"]
    args += ["mean_weight_ptr"] if ir.mean_weight is not None else []
    args += ["n_elements"]
    sig = ",\n    ".join(args + _flags(ir) + ["REDUCE: tl.constexpr", "DTYPE: tl.constexpr", "BLOCK: tl.constexpr"])
    return f"@_jit\ndef {name}(\n    {sig},\n):\n" + "\n".join(pre + body) + "\n"


def _elementwise_backward_kernel(ir: LossIR, printer: LossTritonPrinter, name: str) -> str:
    printer.used_constants = set()
    grads = [ir.grads[n] for n in ir.differentiable]
    body = _element_loads(ir, _free(grads), "    ")
    body.append("    coef = tl.load(coef_ptr + offsets * coef_stride, mask=mask, other=0.0).to(DTYPE)")
    temp_lines, texts = _cse_lines(printer, grads, "    ", "_g")
    body += temp_lines
    for n, text in zip(ir.differentiable, texts):
        body.append(f"    tl.store(grad_{n}_ptr + offsets, (coef * ({text})).to(grad_{n}_ptr.dtype.element_ty), mask=mask)")
    pre = ["    pid = tl.program_id(0)",
           "    offsets = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
           "    mask = offsets < n_elements"] + _hyper_loads(ir, printer, _free(grads))
    args = [f"{i.name}_ptr" for i in ir.spec.inputs] + ["hyper_ptr", "coef_ptr", "coef_stride"]
    args += [f"grad_{n}_ptr" for n in ir.differentiable] + ["n_elements"]
    sig = ",\n    ".join(args + _flags(ir) + ["DTYPE: tl.constexpr", "BLOCK: tl.constexpr"])
    return f"@_jit\ndef {name}(\n    {sig},\n):\n" + "\n".join(pre + body) + "\n"


# -- reference ------------------------------------------------------------------------------------


def _reference_setup(ir: LossIR) -> list[str]:
    """Lines that give every input its reference shape: [N, C] per element, [N, 1] per row,
    [1, C] per class; an absent optional input becomes its default."""
    lines = []
    pred = _prediction(ir)
    for hyper in ir.spec.hypers:
        lines.append(f'    {hyper.name} = h["{hyper.name}"]')
    if ir.row:
        lines.append(f"    num_classes = {pred}.shape[-1]")
    lines.append(f"    _dtype, _device = {pred}.dtype, {pred}.device")
    if ir.row:
        lines.append(f"    _classes = torch.arange(num_classes, device=_device)[None, :]")
    for inp in ir.spec.inputs:
        if inp.role == "index":
            lines.append(f"    {inp.name} = {inp.name}[:, None]  # one class index per row: [N, 1]")
        elif ir.row and inp.role == "class_weight":
            default = f"torch.full((1, num_classes), {float_literal(inp.default)}, dtype=_dtype, device=_device)"
            value = f"{inp.name}[None, :]"
            if inp.default is not None:
                lines.append(f"    {inp.name} = {default} if {inp.name} is None else {value}  # [1, C]")
            else:
                lines.append(f"    {inp.name} = {value}  # one value per class: [1, C]")
        elif inp.default is not None:
            lines.append(f"    if {inp.name} is None:")
            lines.append(f"        {inp.name} = torch.full_like({pred}, {float_literal(inp.default)})")
    return lines


def _prediction(ir: LossIR) -> str:
    return next(i.name for i in ir.spec.inputs if i.role in ("prediction", "logits"))


def _reference_forward(ir: LossIR, printer: TorchPrinter) -> list[str]:
    lines = _reference_setup(ir)
    for line in ir.lines:
        if line[0] == "reduce":
            r = line[1]
            fn = "torch.logsumexp" if r.op == "logsumexp" else "torch.sum"
            lines.append(f"    {r.symbol} = {fn}({printer.doprint(r.body)}, dim=-1, keepdim=True)")
        else:
            _, name, value, _ = line
            lines.append(f"    {name} = {printer.doprint(value)}")
    pred = _prediction(ir)
    like = f"{pred}[:, :1]" if ir.row else pred
    suffix = "[:, 0]" if ir.row else ""
    mean_weight = f"_expand(mean_weight, {like}){suffix}" if ir.mean_weight is not None else "None"
    saved = f"torch.cat([{', '.join(str(r.symbol) for r in ir.reductions)}], dim=-1)" if ir.row else "None"
    lines.append(f"    return _expand(loss, {like}){suffix}, {mean_weight}, {saved}")
    return lines


def _reference_backward(ir: LossIR, printer: TorchPrinter) -> list[str]:
    lines = _reference_setup(ir)
    for k, r in enumerate(ir.reductions):
        lines.append(f"    {r.symbol} = saved[:, {k}:{k + 1}]")
    for r in ir.backward_reductions:
        lines.append(f"    {r.symbol} = torch.sum({printer.doprint(r.full)}, dim=-1, keepdim=True)")
    for sym, expr in reversed(ir.adjoints):
        lines.append(f"    {sym} = {printer.doprint(expr)}")
    pred = _prediction(ir)
    for n in ir.differentiable:
        lines.append(f"    grad_{n} = _expand(coef * ({printer.doprint(ir.grads[n])}), {pred})")
    items = ", ".join(f'"{n}": grad_{n}' for n in ir.differentiable)
    lines.append(f"    return {{{items}}}")
    return lines


# -- module --------------------------------------------------------------------------------------


def render(ir: LossIR, spec_text: str, spec_path: str, module_name: str) -> str:
    kinds = _Kinds(ir.kinds)
    torch_printer = TorchPrinter(kinds)
    forward_lines = _reference_forward(ir, torch_printer)
    backward_lines = _reference_backward(ir, torch_printer)
    constants: list = []
    printer = LossTritonPrinter(constants)
    stem = module_name
    names = {"fwd": f"_{stem}_forward_kernel", "bwd": f"_{stem}_backward_kernel"}
    if ir.row:
        kernels = [_row_forward_kernel(ir, printer, names["fwd"]), _row_backward_kernel(ir, printer, names["bwd"])]
    else:
        kernels = [_elementwise_forward_kernel(ir, printer, names["fwd"]),
                   _elementwise_backward_kernel(ir, printer, names["bwd"])]
    helpers = set(printer.helpers)
    for h in list(helpers):
        helpers.update(HELPER_DEPENDENCIES.get(h, ()))
    triton_helpers = [TRITON_HELPERS[h] if h in TRITON_HELPERS else LOSS_TRITON_HELPERS[h]
                      for h in sorted(helpers, key=_helper_order)]
    host = set(torch_printer.helpers)
    for h in list(host):
        host.update(HOST_HELPER_DEPENDENCIES.get(h, ()))
    host_helpers = [HOST_HELPERS[h] if h in HOST_HELPERS else TORCH_HELPERS[h] for h in sorted(host)]

    spec = ir.spec
    order = []  # constructor arguments: (name, default literal, kind)
    for kind, name in spec.order:
        if kind == "input":
            inp = next(i for i in spec.inputs if i.name == name)
            if inp.default is not None:
                order.append((name, "None", "input"))
        elif kind == "hyper":
            hyper = next(h for h in spec.hypers if h.name == name)
            order.append((name, _number_literal(hyper.default), "hyper"))
        else:
            order.append(("reduction", repr(spec.reduction or "mean"), "reduction"))
    if not any(k == "reduction" for _, _, k in order):
        order.append(("reduction", '"mean"', "reduction"))
    order = [(n, d.replace("'", '"'), k) for n, d, k in order]
    required = [i.name for i in spec.inputs if i.default is None]
    constraints = []
    from .printers import ReferencePrinter

    ref = ReferencePrinter()
    for hyper in spec.hypers:
        if hyper.constraint is not None:
            _mark_host(hyper.constraint)
            text = ref.expr(hyper.constraint)
            constraints.append((hyper.name, text, text))
    host_helpers += [HOST_HELPERS[h] for h in sorted(ref.helpers) if HOST_HELPERS[h] not in host_helpers]

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("optdsl", "templates"),
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["pystr"] = _python_string
    template = env.get_template("loss_module.py.j2")
    inputs = [(i.name, i.role, i.default, i.differentiable) for i in spec.inputs]
    return template.render(
        version=__version__,
        spec_path=_comment_text(spec_path),
        spec_hash=hashlib.sha256(spec_text.encode()).hexdigest(),
        name=spec.name,
        doc=spec.doc,
        functional=snake_case(spec.name),
        row=ir.row,
        inputs=inputs,
        input_names=[i.name for i in spec.inputs],
        required=required,
        prediction=_prediction(ir),
        hypers=[h.name for h in spec.hypers],
        hyper_defaults={h.name: _number_literal(h.default) for h in spec.hypers},
        constants=[float_literal(c) for c in constants],
        constraints=constraints,
        order=order,
        has_mean_weight=ir.mean_weight is not None,
        n_saved=len(ir.reductions),
        differentiable=ir.differentiable,
        optional=[i.name for i in spec.inputs if i.default is not None],
        host_helpers=host_helpers,
        triton_helpers=triton_helpers,
        kernels=kernels,
        kernel_names=names,
        pointer_args=", ".join(f'_pointer(x["{n}"], hyper)' for n in (i.name for i in spec.inputs)),
        grad_args=", ".join(f'grads["{n}"]' for n in ir.differentiable),
        forward_lines=forward_lines,
        backward_lines=backward_lines,
        reduction_default=spec.reduction or "mean",
    )


def _helper_order(name):
    # _log1p before the helpers that call it (the interpreter resolves globals at call time, but
    # keep definitions before use for readers).
    return (name != "_log1p", name)


def _number_literal(value: float) -> str:
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return float_literal(float(value))


def _mark_host(expr):
    """The reference printer reads each node's kind: constraints are host expressions."""
    from . import ast as A
    from .ast import HOST as AST_HOST

    stack = [expr]
    while stack:
        e = stack.pop()
        e.kind = AST_HOST
        if isinstance(e, A.Unary):
            stack.append(e.operand)
        elif isinstance(e, A.Binary):
            stack += [e.left, e.right]
        elif isinstance(e, A.Compare):
            stack += list(e.operands)
        elif isinstance(e, A.Call):
            stack += list(e.args)
