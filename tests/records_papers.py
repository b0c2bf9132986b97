"""Records for the specs from papers (specs/lion.opt ... specs/home3.opt).

Each spec is checked against an implementation written elsewhere: the pytorch_optimizer class,
configured (flags fixed in `_po`) to the plain algorithm the spec implements, where it has one;
otherwise an independent plain-PyTorch transcription in transcriptions.py (Adam-atan2, HOME3).
Where a paper's printed equations and its authors' released code differ (eps placement, bias
correction), the spec follows the code, as pytorch_optimizer does, and says so in its docstring.
Every record's configs move each hyperparameter off its default and set each flag.
"""

from __future__ import annotations

import pytorch_optimizer as po

import transcriptions
from harness import OptimInfo


def _same(*names):
    return {name: name for name in names}


def _po(cls, **fixed):
    """pytorch_optimizer's `cls` with the options that select the paper's form fixed, on its
    per-parameter code path (foreach=False)."""

    def build(params, **kwargs):
        return cls(params, foreach=False, **fixed, **kwargs)

    build.__name__ = f"pytorch_optimizer.{cls.__name__}"
    return build


_EPS_UNDER_SQRT = (
    "pytorch_optimizer adds 1e-15 under the square root (apply_ams_bound's exp_avg_sq_eps); the spec "
    "does not. That alone is the fp64 param difference (about 2e-12; about 1e-16 with it patched to 0)."
)
_FINAL_LR = (
    "pytorch_optimizer rescales final_lr by lr/initial_lr (1 here: lr is constant); the spec uses "
    "final_lr as given."
)

RECORDS = [
    OptimInfo(
        spec="lion",
        cls="Lion",
        oracle=_po(po.Lion, weight_decouple=True, fixed_decay=False),
        state_map=_same("exp_avg"),
        configs=[
            {},
            {"lr": 3e-3, "betas": (0.95, 0.98), "weight_decay": 0.1},
            {"lr": 1e-3, "betas": (0.5, 0.9), "weight_decay": 1.0},
        ],
        notes="pytorch_optimizer decays first (p *= 1 - lr*wd) then adds -lr*sign(c); we write the "
        "paper's p - lr*(sign(c) + wd*p). Same value up to rounding.",
    ),
    OptimInfo(
        spec="sign_sgd",
        cls="SignSGD",
        oracle=_po(po.SignSGD, momentum=0.0, weight_decouple=False),
        state_map={},
        configs=[
            {},
            {"lr": 0.01, "weight_decay": 0.1},
        ],
        notes="Neither side keeps a state: params only.",
    ),
    OptimInfo(
        spec="signum",
        cls="Signum",
        oracle=_po(po.SignSGD, weight_decouple=False),
        state_map=_same("momentum_buffer"),
        configs=[
            {},
            {"lr": 0.01, "momentum": 0.5, "weight_decay": 0.1},
            {"lr": 3e-4, "momentum": 0.99},
        ],
        notes="pytorch_optimizer.SignSGD with momentum > 0 is Signum (momentum_buffer.lerp_(g, 1 - momentum)).",
    ),
    OptimInfo(
        spec="diff_grad",
        cls="DiffGrad",
        oracle=_po(po.DiffGrad, weight_decouple=False, rectify=False, ams_bound=False),
        state_map=_same("exp_avg", "exp_avg_sq", "previous_grad"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 3e-4, "betas": (0.95, 0.9), "eps": 1e-3},
        ],
        notes=_EPS_UNDER_SQRT,
    ),
    OptimInfo(
        spec="ada_belief",
        cls="AdaBelief",
        oracle=_po(po.AdaBelief, weight_decouple=True, fixed_decay=False, rectify=False),
        oracle_kwargs=lambda c: {("ams_bound" if k == "amsgrad" else k): v for k, v in c.items()},
        state_map=_same("exp_avg", "exp_avg_var", "max_exp_avg_var"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.1},
            {"lr": 3e-3, "amsgrad": True, "eps": 1e-10, "weight_decay": 0.01},
        ],
    ),
    OptimInfo(
        spec="ada_bound",
        cls="AdaBound",
        oracle=_po(po.AdaBound, weight_decouple=False, ams_bound=False),
        state_map=_same("exp_avg", "exp_avg_sq"),
        configs=[
            {},
            {"lr": 0.01, "final_lr": 0.05, "betas": (0.8, 0.99), "gamma": 0.1, "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.1, "final_lr": 0.01, "gamma": 0.5},
        ],
        notes=_EPS_UNDER_SQRT + " " + _FINAL_LR,
    ),
    OptimInfo(
        spec="ams_bound",
        cls="AMSBound",
        oracle=_po(po.AdaBound, weight_decouple=False, ams_bound=True),
        state_map=_same("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        configs=[
            {},
            {"lr": 0.01, "final_lr": 0.05, "betas": (0.8, 0.99), "gamma": 0.1, "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.1, "final_lr": 0.01, "gamma": 0.5},
        ],
        notes=_EPS_UNDER_SQRT + " " + _FINAL_LR,
    ),
    OptimInfo(
        spec="adan",
        cls="Adan",
        oracle=_po(po.Adan, weight_decouple=False, max_grad_norm=0.0),
        state_map=_same("exp_avg", "exp_avg_diff", "exp_avg_sq"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.5, 0.5, 0.999), "weight_decay": 0.02},
        ],
        notes="pytorch_optimizer keeps the negated previous gradient in 'previous_grad' (it adds "
        "the new gradient to it to form the difference); ours holds the gradient itself, so that "
        "state is left out of the map. It enters every later step's exp_avg_diff and exp_avg_sq, "
        "which are compared.",
    ),
    OptimInfo(
        spec="ex_adam",
        cls="EXAdam",
        oracle=_po(po.EXAdam, weight_decouple=True, fixed_decay=False),
        state_map=_same("exp_avg", "exp_avg_sq"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.95, 0.9), "eps": 1e-3},
        ],
    ),
    # No pytorch_optimizer class: independent transcriptions.
    OptimInfo(
        spec="adam_atan2",
        cls="AdamAtan2",
        oracle=transcriptions.AdamAtan2,
        state_map={"exp_avg": "m", "exp_avg_sq": "v"},
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "a": 1.0, "b": 2.0, "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.95, 0.9), "a": 2.0, "b": 0.5},
        ],
        notes="No pytorch_optimizer class: checked against transcriptions.AdamAtan2.",
    ),
    OptimInfo(
        spec="home3",
        cls="HOME3",
        oracle=transcriptions.HOME3,
        state_map={"exp_avg": "m", "exp_avg_sq": "v", "m3": "m3"},
        configs=[
            {},
            {"gamma": 0.0},  # exactly Adam with decoupled weight decay
            {"lr": 0.01, "betas": (0.8, 0.99, 0.5), "gamma": 1.0, "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.95, 0.9, 0.99), "gamma": 0.25, "eps": 1e-3},
        ],
        notes="Our own formula (see the spec's docstring), checked against transcriptions.HOME3. "
        "m3 is float32 on both sides, also for float64 parameters.",
    ),
]
