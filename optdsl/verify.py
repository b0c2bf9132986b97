"""`optdsl verify`: check any spec with no hand-written test, as torch's OptimizerInfo does for
torch.optim. For every configuration in the matrix it runs

* the planned IR (simplified, hoisted, CSE'd) and the generated PyTorch reference against a plain
  fp64 interpretation of the unsimplified spec, step by step;
* the Triton kernels (Triton's interpreter on a CPU-only machine, the GPU when there is one)
  against the reference, in every parameter dtype;
* torch.optim behaviour: grad-None steps, a param frozen then unfrozen, a state_dict round trip in
  the middle of a run (the resumed run must be bit-identical), zero gradients leaving params
  unchanged where the spec implies it, and no NaN where the fp64 interpretation has none.

Configurations: the defaults, every flag flipped (alone and all together), hyperparameters drawn
from each declared range, a tensor lr, and two param groups with different hyperparameters.
"""

from __future__ import annotations

import copy
import io
import math
import os
import random
import sys
import warnings
from dataclasses import dataclass, field

# Sizes straddle the 1024-element block; 0-dim and zero-size tensors included.
SHAPES = ((33, 31), (1025,), (), (0, 4))
QUICK_SHAPES = ((5, 7), (1025,), (), (0, 3))
# Limits on the max relative error per tensor, |a - b|max / max(|b|max, 1e-2).
LIMITS = {"fp64": 1e-10, "float32": 1e-5, "bfloat16": 1.6e-2, "float16": 2e-3, "extreme": 1e-4}


@dataclass
class Row:
    case: str
    errors: dict = field(default_factory=dict)  # tensor name -> max relative error
    limit: float = 0.0
    abs_error: float = 0.0
    failure: str = ""  # a behaviour check's message; empty when it passed
    limits: dict = field(default_factory=dict)  # per-tensor limits that differ from `limit`

    @property
    def ok(self) -> bool:
        return not self.failure and all(e <= self.limits.get(n, self.limit) for n, e in self.errors.items())


def _rel(actual, expected, floor: float = 1e-2) -> float:
    """Max relative error of a tensor against the expected one; values below `floor` are compared
    against `floor`, so a state crossing zero does not read as a large relative error."""
    import torch

    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.numel() == 0:
        return 0.0
    if not torch.equal(torch.isnan(actual), torch.isnan(expected)):
        return math.inf
    finite = torch.isfinite(expected) & torch.isfinite(actual)
    if not torch.equal(actual[~finite].nan_to_num(0.0), expected[~finite].nan_to_num(0.0)):
        return math.inf  # an inf where the other side is finite, or of the other sign
    diff = (actual[finite] - expected[finite]).abs().max().item() if finite.any() else 0.0
    scale = expected[finite].abs().max().item() if finite.any() else 0.0
    return diff / max(scale, floor, 1e-300) if diff else 0.0


def _abs(actual, expected) -> float:
    import torch

    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    both = torch.isfinite(a) & torch.isfinite(b)
    return (a[both] - b[both]).abs().max().item() if both.any() else 0.0


def _loss_of(params):
    """A loss for rules that read one: a function of the params, so each optimizer of a pair sees
    the loss of its own params, as in training, and bounded (in [0, 2]), because the gradients
    verify draws are not its gradients and a growing loss would overflow float32 for any rule."""
    import torch

    values = torch.cat([p.detach().double().reshape(-1) for p in params])
    return 1 + torch.tanh(values).mean() if values.numel() else torch.ones((), dtype=torch.float64)


class _Spec:
    """The compiled spec, its generated module and the pieces of it verify drives directly."""

    def __init__(self, path):
        from .compiler import compile_file, load_module

        self.compiled = compile_file(path)
        self.module = load_module(path)
        self.cls = getattr(self.module, self.compiled.checked.name)
        self.checked = self.compiled.checked
        self.has_triton = getattr(self.module, "triton", None) is not None
        self.uses_loss = self.checked.uses_loss
        self.staged = self.compiled.plan.lowered.staged
        self.has_globals = bool(self.compiled.plan.global_reductions)

    def globals_of(self, items) -> dict:
        """The interpretation's global reductions over `items` (none to compute for most rules)."""
        from .interpret import interpret_globals

        return interpret_globals(self.checked, items) if self.has_globals else {}

    def step(self, opt, params):
        """opt.step(), with the loss of `params` for a rule that reads it."""
        return opt.step(loss=_loss_of(params)) if self.uses_loss else opt.step()

    def valid(self, config) -> bool:
        import torch

        try:
            self.cls([torch.zeros(1, requires_grad=True)], **config)
            return True
        except ValueError:
            return False

    def states(self, config) -> list[str]:
        """Every state the spec keeps under `config` (after one step, so lazy states exist)."""
        import torch

        p = torch.zeros(3, requires_grad=True)
        opt = self.cls([p], backend="torch", **config)
        p.grad = torch.ones(3)
        self.step(opt, [p])
        p.grad = torch.ones(3)
        self.step(opt, [p])
        return [k for k in opt.state[p] if k != "step"]


# --- configurations -----------------------------------------------------------------------------

def configurations(spec: _Spec, rng: random.Random, samples: int):
    """(label, group kwargs) pairs: defaults, flags, sampled hyperparameters, tensor lr."""
    import torch

    hypers = spec.checked.spec.hypers
    flags = [h for h in hypers if h.is_flag]
    configs = [("defaults", {})]
    for flag in flags:
        configs.append((f"{flag.name}={not flag.default}", {flag.name: not flag.default}))
    if len(flags) > 1:
        configs.append(("all flags flipped", {f.name: not f.default for f in flags}))
    for i in range(samples):
        drawn = draw_hyperparameters(spec, rng)
        if drawn:
            configs.append((f"sampled #{i + 1}", drawn))
    if any(h.name == "lr" for h in hypers):
        default_lr = next(h.default for h in hypers if h.name == "lr")
        configs.append(("tensor lr", {"lr": torch.tensor(float(default_lr) * 0.5 or 1e-3)}))
    return [(label, config) for label, config in configs if spec.valid(config) or label == "defaults"]


def _draw(default: float | None, rng: random.Random) -> float | None:
    if default is None:  # unset (`none`): keep it unset, or give it a small number
        return rng.choice([None, 1e-6])
    if default == 0:
        return rng.choice([0.0, 1e-3, 1e-2, 0.1, 0.5])
    if 0 < default < 1 and rng.random() < 0.5:
        # Rates near 1 (betas) move towards 1 or away from it in log(1 - x).
        return 1 - (1 - default) * math.exp(rng.uniform(-1.5, 1.5))
    return default * math.exp(rng.uniform(-1.5, 1.5)) * rng.choice([1, 1, 1, -1])


def draw_hyperparameters(spec: _Spec, rng: random.Random, tries: int = 200) -> dict:
    """Non-default numeric hyperparameters inside each declared range (rejection sampling against
    the spec's own `where` constraints). Flags are drawn at random too."""
    hypers = spec.checked.spec.hypers
    for _ in range(tries):
        config = {}
        for hyper in hypers:
            if hyper.is_flag:
                config[hyper.name] = rng.random() < 0.5
            elif isinstance(hyper.default, tuple):
                config[hyper.name] = tuple(_draw(v, rng) for v in hyper.default)
            else:
                config[hyper.name] = _draw(hyper.default, rng)
        if spec.valid(config):
            return config
    return {}


# --- tensors and runs ---------------------------------------------------------------------------

def _tensors(shapes, gen, steps, scale=1.0, zero_fraction=0.0):
    import torch

    base = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    grads = []
    for _ in range(steps):
        step_grads = []
        for s in shapes:
            g = torch.randn(s, generator=gen, dtype=torch.float64) * scale
            if zero_fraction:
                g = torch.where(torch.rand(s, generator=gen, dtype=torch.float64) < zero_fraction, 0.0, g)
            step_grads.append(g)
        grads.append(step_grads)
    return base, grads


def _run(spec, config, base, grads, dtype, backend, device, groups=None, resync_from=None):
    """Run an optimizer; return (params, optimizer) after each step as snapshots."""
    params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
    if groups:
        param_groups = [{"params": params[: len(params) // 2], **groups[0]}, {"params": params[len(params) // 2:], **groups[1]}]
        opt = spec.cls(param_groups, backend=backend, **config)
    else:
        opt = spec.cls(params, backend=backend, **config)
    history = []
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = g.to(dtype).to(device)
        spec.step(opt, params)
        history.append(_snapshot(opt, params))
    return params, opt, history


def _snapshot(opt, params):
    out = []
    for p in params:
        state = {k: v.detach().clone() for k, v in opt.state[p].items() if k != "step" and hasattr(v, "clone")}
        out.append((p.detach().clone(), state))
    return out


def _compare(history_a, history_b, floor: float = 1e-2) -> tuple[dict, float]:
    worst: dict = {}
    worst_abs = 0.0
    for step_a, step_b in zip(history_a, history_b):
        for (pa, sa), (pb, sb) in zip(step_a, step_b):
            worst["param"] = max(worst.get("param", 0.0), _rel(pa, pb, floor))
            worst_abs = max(worst_abs, _abs(pa, pb))
            if set(sa) != set(sb):
                worst["state keys"] = math.inf
            for name in sa:
                if name in sb:
                    worst[name] = max(worst.get(name, 0.0), _rel(sa[name], sb[name], floor))
                    worst_abs = max(worst_abs, _abs(sa[name], sb[name]))
    return worst, worst_abs


def _lockstep_resync(spec, config, base, grads, dtype, device):
    """Triton vs reference for low-precision params: each step restarts both from the same values,
    so the error is one step's rounding rather than compounded one-ulp flips."""
    import torch

    ref_params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
    tri_params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
    ref = spec.cls(ref_params, backend="torch", **config)
    tri = spec.cls(tri_params, backend="triton", **config)
    worst: dict = {}
    worst_abs = 0.0
    for step_grads in grads:
        for a, b, g in zip(ref_params, tri_params, step_grads):
            a.grad, b.grad = g.to(dtype).to(device), g.to(dtype).to(device)
        spec.step(ref, ref_params)
        spec.step(tri, tri_params)
        errors, abs_error = _compare([_snapshot(tri, tri_params)], [_snapshot(ref, ref_params)])
        worst_abs = max(worst_abs, abs_error)
        for k, v in errors.items():
            worst[k] = max(worst.get(k, 0.0), v)
        with torch.no_grad():
            for a, b in zip(ref_params, tri_params):
                b.copy_(a)
                for name, value in ref.state[a].items():
                    if name != "step":
                        tri.state[b][name].copy_(value)
    return worst, worst_abs


def _interpretation_rows(spec, label, config, base, grads):
    """Reference and planned IR vs the fp64 interpretation of the unsimplified spec, step by step."""
    import torch

    from .interpret import evaluate_plan, interpret_step, tensor_values

    module = spec.module
    params = [b.clone().requires_grad_() for b in base]
    opt = spec.cls(params, backend="torch", **config)
    worst_ref: dict = {}
    worst_ir: dict = {}
    abs_ref = abs_ir = 0.0
    nan_failure = ""
    for step_grads in grads:
        items = []
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
            state = opt.state[p]
            h = dict(module._hyperparameters(opt.param_groups[0]), **tensor_values(p))
            h["step"] = float(state["step"]) + 1 if "step" in state else 1.0
            for name in spec.checked.fresh_states:
                h[f"fresh_{name}"] = name not in state
            key = module._variant(h)
            touched = module._VARIANTS[key][1]
            tensors = {n: (state[n] if n in state else module._init_state(n, p, h)).double() for n in touched}
            items.append((p.detach(), g, tensors, h, key))
        inputs = {"loss": _loss_of(params)} if spec.uses_loss else {}
        inputs["__globals__"] = spec.globals_of([item[:4] for item in items])
        expectations = []
        for p, g, tensors, h, key in items:
            expected = interpret_step(spec.checked, p, g, tensors, h, inputs)
            if not spec.staged:  # a staged plan is checked by running its kernels against the reference
                planned = evaluate_plan(spec.compiled.plan, key, p, g, tensors, h)
                for name, value in planned.items():
                    worst_ir[name] = max(worst_ir.get(name, 0.0), _rel(value, expected[name]))
                    abs_ir = max(abs_ir, _abs(value, expected[name]))
            expectations.append(expected)
        spec.step(opt, params)
        for p, expected in zip(params, expectations):
            for name, value in expected.items():
                actual = p if name == "param" else opt.state[p][name]
                worst_ref[name] = max(worst_ref.get(name, 0.0), _rel(actual, value))
                abs_ref = max(abs_ref, _abs(actual, value))
                if not torch.isnan(value).any() and torch.isnan(actual).any() and not nan_failure:
                    nan_failure = f"NaN in {name} where the fp64 interpretation has none"
    # A state the spec stores in a narrower dtype (`state m: float32`) is rounded every step.
    stored = {s.name: LIMITS[s.dtype] for s in spec.checked.spec.states if s.dtype in ("float32", "bfloat16", "float16")}
    # A per-tensor scalar computed on the host is kept as torch keeps `step`: float32 unless the
    # default dtype is float64.
    if torch.get_default_dtype() != torch.float64:
        stored.update({name: LIMITS["float32"] for name in spec.checked.host_states})
    rows = [Row(f"{label}: reference vs spec (fp64)", worst_ref, LIMITS["fp64"], abs_ref, nan_failure, stored)]
    if not spec.staged:
        rows.append(Row(f"{label}: planned IR vs spec (fp64)", worst_ir, LIMITS["fp64"], abs_ir))
    return rows


# --- behaviour checks ---------------------------------------------------------------------------

def _behaviour_rows(spec, backends, device, shapes, gen, config):
    import torch

    rows = []
    label = "defaults" if not config else "sampled #1"
    base, grads = _tensors(shapes, gen, 6)
    dtype = torch.float32
    for backend in backends:
        # A grad-None step skips the param: no change, no step count.
        params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
        opt = spec.cls(params, backend=backend, **config)
        failure = ""
        for step, step_grads in enumerate(grads[:4]):
            frozen = 1 if step in (1, 2) else None
            before = params[0 if frozen is None else frozen].detach().clone()
            state_before = {k: v.clone() for k, v in opt.state[params[frozen]].items()} if frozen is not None else {}
            for i, (p, g) in enumerate(zip(params, step_grads)):
                p.grad = None if i == frozen else g.to(dtype).to(device)
            spec.step(opt, params)
            if frozen is not None:
                if not torch.equal(params[frozen], before):
                    failure = "a param without grad changed"
                for k, v in state_before.items():
                    if not torch.equal(opt.state[params[frozen]][k], v):
                        failure = f"state {k} of a param without grad changed"
        if "step" in opt.state[params[1]] and float(opt.state[params[1]]["step"]) != 2:
            failure = failure or f"frozen param's step is {float(opt.state[params[1]]['step'])}, expected 2"
        rows.append(Row(f"{label}: grad None / frozen then unfrozen ({backend})", failure=failure))

        # state_dict round trip mid-run: the resumed run is bit-identical.
        params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
        opt = spec.cls(params, backend=backend, **config)
        twin_params = None
        twin = None
        failure = ""
        for step, step_grads in enumerate(grads):
            if step == 3:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                buffer.seek(0)
                twin_params = [p.detach().clone().requires_grad_() for p in params]
                twin = spec.cls(twin_params, backend=backend, **config)
                twin.load_state_dict(torch.load(buffer, weights_only=True))
            for i, g in enumerate(step_grads):
                params[i].grad = g.to(dtype).to(device)
                if twin is not None:
                    twin_params[i].grad = g.to(dtype).to(device)
            spec.step(opt, params)
            if twin is not None:
                spec.step(twin, twin_params)
                for a, b in zip(params, twin_params):
                    if not torch.equal(a, b) or any(not torch.equal(opt.state[a][k], twin.state[b][k]) for k in opt.state[a]):
                        failure = failure or f"resumed run differs at step {step + 1}"
        copy.deepcopy(opt)
        repr(opt)
        rows.append(Row(f"{label}: state_dict round trip mid-run, bit-exact ({backend})", failure=failure))

        # Zero gradients (weight decay off) leave params unchanged where the spec implies it.
        no_decay = {h.name: 0.0 for h in spec.checked.spec.hypers if "decay" in h.name and not h.is_flag}
        zero_config = {**config, **no_decay}
        if spec.valid(zero_config):
            implied = _zero_grad_is_noop(spec, zero_config)
            params = [b.detach().clone().to(dtype).to(device).requires_grad_() for b in base]
            opt = spec.cls(params, backend=backend, **zero_config)
            before = [p.detach().clone() for p in params]
            for _ in range(3):
                for p in params:
                    p.grad = torch.zeros_like(p)
                spec.step(opt, params)
            unchanged = all(torch.equal(a, b) for a, b in zip(params, before))
            failure = "" if unchanged or not implied else "zero gradients moved the params"
            rows.append(Row(f"{label}: zero grads{' (' + ', '.join(no_decay) + ' = 0)' if no_decay else ''}: "
                            f"{'unchanged' if implied else 'spec moves params'} ({backend})", failure=failure))
    return rows


def _zero_grad_is_noop(spec, config) -> bool:
    """Whether the unsimplified spec, interpreted in fp64, leaves params unchanged on zero grads."""
    import torch

    from .interpret import interpret_step, tensor_values

    module = spec.module
    p = torch.randn(16, dtype=torch.float64)
    group = dict(spec.cls([torch.zeros(1, requires_grad=True)], **config).param_groups[0])
    h = dict(module._hyperparameters(group), **tensor_values(p))
    state: dict = {}
    for step in range(1, 4):
        h["step"] = float(step)
        for name in spec.checked.fresh_states:
            h[f"fresh_{name}"] = name not in state
        touched = module._VARIANTS[module._variant(h)][1]
        for n in touched:
            state.setdefault(n, module._init_state(n, p, h).double())
        inputs = {"loss": _loss_of([p])} if spec.uses_loss else {}
        item = (p, torch.zeros_like(p), {n: state[n] for n in touched}, h)
        inputs["__globals__"] = spec.globals_of([item])
        result = interpret_step(spec.checked, *item, inputs)
        if not torch.equal(result["param"], p):
            return False
        state.update({k: v for k, v in result.items() if k != "param"})
    return True


# --- the matrix ---------------------------------------------------------------------------------

def verify_file(path, steps: int = 5, seed: int = 0, out=sys.stdout, quick: bool = False) -> bool:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before the module's kernels are decorated
    if device == "cpu":
        # The interpreter evaluates masked-off lanes too; numpy's overflow warnings there are noise.
        warnings.filterwarnings("ignore", category=RuntimeWarning, module="triton")
    spec = _Spec(path)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shapes = QUICK_SHAPES if quick else SHAPES
    steps = min(steps, 3) if quick else steps
    samples = 1 if quick else 3
    rows: list[Row] = []
    configs = configurations(spec, rng, samples)

    for label, config in configs:
        base, grads = _tensors(shapes, gen, steps)
        rows += _interpretation_rows(spec, label, config, base, grads)
        if not spec.has_triton:
            continue
        dtypes = [torch.float32] if quick and label != "defaults" else [torch.float32, torch.bfloat16, torch.float16, torch.float64]
        for dtype in dtypes:
            name = str(dtype).removeprefix("torch.")
            if dtype in (torch.float32, torch.float64):
                *_, ref = _run(spec, config, base, grads, dtype, "torch", device)
                *_, tri = _run(spec, config, base, grads, dtype, "triton", device)
                errors, abs_error = _compare(tri, ref)
                # float64 params: the kernel does its math in float32.
                rows.append(Row(f"{label}: triton vs reference ({name}, {device})", errors, LIMITS["float32"], abs_error))
            else:
                errors, abs_error = _lockstep_resync(spec, config, base, grads, dtype, device)
                rows.append(Row(f"{label}: triton vs reference ({name} per step, {device})", errors, LIMITS[name], abs_error))

    if spec.has_triton:
        # Two param groups with different hyperparameters.
        drawn = draw_hyperparameters(spec, rng)
        base, grads = _tensors(shapes, gen, steps)
        groups = [{}, {k: v for k, v in drawn.items()}]
        *_, ref = _run(spec, {}, base, grads, torch.float32, "torch", device, groups=groups)
        *_, tri = _run(spec, {}, base, grads, torch.float32, "triton", device, groups=groups)
        errors, abs_error = _compare(tri, ref)
        rows.append(Row(f"two param groups: triton vs reference (float32, {device})", errors, LIMITS["float32"], abs_error))

        # Non-contiguous params, gradients with zeros, huge and tiny magnitudes.
        for label, scale, zeros in (("grads with zeros", 1.0, 0.5), ("huge grads (1e10)", 1e10, 0.0), ("tiny grads (1e-10)", 1e-10, 0.0)):
            base, grads = _tensors(shapes, gen, steps, scale, zeros)
            *_, ref64 = _run(spec, {}, base, grads, torch.float64, "torch", "cpu")
            *_, ref = _run(spec, {}, base, grads, torch.float32, "torch", device)
            *_, tri = _run(spec, {}, base, grads, torch.float32, "triton", device)
            # Purely relative here: the floor would hide errors in tiny values.
            errors, abs_error = _compare(tri, ref, floor=0.0)
            failure = ""
            for history in (ref, tri):
                for snap, snap64 in zip(history, ref64):
                    for (p, s), (p64, s64) in zip(snap, snap64):
                        for a, b in [(p, p64)] + [(s[k], s64[k]) for k in s]:
                            if torch.isnan(a).any() and not torch.isnan(b).any():
                                failure = "NaN in float32 where float64 has none"
            rows.append(Row(f"{label}: triton vs reference (float32, {device})", errors, LIMITS["extreme"], abs_error, failure))
        base, grads = _tensors(((9, 40),), gen, steps)
        transposed = [b.t() for b in base]
        transposed_grads = [[g.t() for g in step] for step in grads]
        *_, ref = _run(spec, {}, transposed, transposed_grads, torch.float32, "torch", device)
        *_, tri = _run(spec, {}, transposed, transposed_grads, torch.float32, "triton", device)
        errors, abs_error = _compare(tri, ref)
        rows.append(Row(f"non-contiguous params: triton vs reference (float32, {device})", errors, LIMITS["float32"], abs_error))

    backends = ["torch", "triton"] if spec.has_triton else ["torch"]
    for _, config in [c for c in configs if c[0] in ("defaults", "sampled #1")]:
        rows += _behaviour_rows(spec, backends, device, shapes, gen, config)
    _print(out, path, rows, spec.has_triton, len(configs))
    return all(r.ok for r in rows)


def _print(out, path, rows, has_triton, n_configs):
    names = list(dict.fromkeys(["param"] + [n for r in rows for n in r.errors]))
    width = max(len(r.case) for r in rows)
    print(f"{path}  ({n_configs} configurations, {len(rows)} checks)", file=out)
    if not has_triton:
        print("  (triton is not installed: only the reference and IR checks ran)", file=out)
    header = f"  {'case':<{width}}  " + "  ".join(f"{n[:12]:>12}" for n in names) + f"  {'max abs':>9}  result"
    print(header, file=out)
    for r in rows:
        cells = "  ".join(f"{r.errors[n]:>12.2e}" if n in r.errors else f"{'-':>12}" for n in names)
        result = "ok" if r.ok else (f"FAIL: {r.failure}" if r.failure else f"FAIL (limit {r.limit:g})")
        abs_cell = f"{r.abs_error:>9.1e}" if r.errors else f"{'':>9}"
        print(f"  {r.case:<{width}}  {cells}  {abs_cell}  {result}", file=out)
    failed = sum(not r.ok for r in rows)
    print(f"  {len(rows) - failed} passed, {failed} failed (max relative error per tensor, |a-b|/max(|b|, 1e-2))", file=out)
