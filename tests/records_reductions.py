"""Records for the specs with reductions, per-row/column/scalar state or the loss (specs/*.opt).
Specs still in drafts/specs (not yet compiled) are left out of RECORDS by `_DRAFTS` below.

Each spec is checked against an implementation written elsewhere: torch.optim (Adafactor, NAdam),
pytorch_optimizer configured to the published algorithm (AdamP, SGDP, Lamb, LARS, MARS; flags
fixed in `_po` and stated in each record), torch compositions (clip_grad_norm_/clip_grad_value_ +
torch.optim.AdamW, gradient centralization + torch.optim.SGD/Adam) or an independent transcription
(AGR, the Polyak step sizes) in transcriptions_reductions.py, itself validated by
test_transcriptions_reductions.py. Every record's configs move each hyperparameter off its default
and set each flag.

Extra fields used here (harness.OptimInfo):
* loss_fn: the spec reads `loss`; drive lockstep with `loss_fn=record.loss_fn` (grads and loss
  from harness.least_squares_loss, a stochastic least-squares problem with f* = 0, deterministic
  from the seed), so that both optimizers get step(closure).
* global_reduction: the step of one parameter depends on the others (global_norm / global_sum):
  tests that split parameters over several oracle instances do not apply.
"""

from __future__ import annotations

import pytorch_optimizer as po
import torch

import transcriptions_reductions as tr
from harness import OptimInfo, least_squares_loss


def _same(*names):
    return {name: name for name in names}


def _po(cls, **fixed):
    """pytorch_optimizer's `cls` with the options that select the published form fixed, on its
    per-parameter code path (foreach=False)."""

    def build(params, **kwargs):
        return cls(params, foreach=False, **fixed, **kwargs)

    build.__name__ = f"pytorch_optimizer.{cls.__name__}"
    return build


ADAMW_STATES = _same("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_EPS_UNDER_SQRT = (
    "pytorch_optimizer adds 1e-15 under the square root (apply_ams_bound's exp_avg_sq_eps); the spec "
    "does too, so the two agree to rounding."
)

RECORDS = [
    # --- clipping + AdamW -------------------------------------------------------------------
    OptimInfo(
        spec="adamw_clip_global",
        cls="AdamWClipGlobal",
        oracle=tr.AdamWClipGlobal,
        state_map=ADAMW_STATES,
        global_reduction=True,
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "max_norm": 0.5},
            {"amsgrad": True, "maximize": True, "max_norm": 5.0},
            {"max_norm": 100.0},  # clipping inactive: plain AdamW
        ],
        notes="Oracle: torch.nn.utils.clip_grad_norm_ over every parameter with a grad (norm of all "
        "groups; each group scales by its own max_norm) then torch.optim.AdamW. The 1e-6 added to "
        "the norm is clip_grad_norm_'s.",
    ),
    OptimInfo(
        spec="adamw_clip_tensor",
        cls="AdamWClipTensor",
        oracle=tr.AdamWClipTensor,
        state_map=ADAMW_STATES,
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "max_norm": 3.0},
            {"amsgrad": True, "maximize": True, "max_norm": 0.2},
        ],
        notes="Oracle: torch.nn.utils.clip_grad_norm_([p], max_norm) per parameter, then torch.optim.AdamW.",
    ),
    OptimInfo(
        spec="adamw_clip_value",
        cls="AdamWClipValue",
        oracle=tr.AdamWClipValue,
        state_map=ADAMW_STATES,
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "clip_value": 0.3},
            {"amsgrad": True, "maximize": True, "clip_value": 2.0},
        ],
        notes="Oracle: torch.nn.utils.clip_grad_value_ then torch.optim.AdamW. No reduction; here as the "
        "third clipping form of the issue.",
    ),
    # --- AGR ----------------------------------------------------------------------------------
    OptimInfo(
        spec="agr_adamw",
        cls="AGRAdamW",
        oracle=tr.AGRAdamW,
        state_map=ADAMW_STATES,
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"amsgrad": True, "maximize": True, "weight_decay": 0.0},
        ],
        notes="pytorch_optimizer 4.1 has no AGR: transcriptions_reductions.AGRAdamW, validated against the "
        "authors' AGR formula + torch.optim.AdamW. For an all-zero gradient the authors' code gives NaN "
        "(0/0); spec and transcription give the zero gradient. AGR of a 1-element tensor is 0.",
    ),
    OptimInfo(
        spec="agr_adan",
        cls="AGRAdan",
        oracle=tr.AGRAdan,
        state_map=_same("exp_avg", "exp_avg_diff", "exp_avg_sq", "previous_grad"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.9, 0.8, 0.95), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 3e-3, "betas": (0.5, 0.5, 0.999), "weight_decay": 0.02},
        ],
        notes="Transcription validated against AGR + pytorch_optimizer.Adan(weight_decouple=False, "
        "max_grad_norm=0). previous_grad holds the regularized gradient (as the AGR authors' Adan_AGR).",
    ),
    # --- projections / trust ratios (pytorch_optimizer) --------------------------------------
    OptimInfo(
        spec="adamp",
        cls="AdamP",
        oracle=_po(po.AdamP, weight_decouple=True, fixed_decay=False),
        state_map=_same("exp_avg", "exp_avg_sq"),
        configs=[
            {},  # delta = 0.1: random grads never project
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "delta": 3.0, "wd_ratio": 0.5},
            {"delta": 0.9, "weight_decay": 0.05, "nesterov": True, "maximize": True},  # channel, layer and none
            {"delta": 0.6, "wd_ratio": 0.0, "weight_decay": 0.1, "lr": 0.02},
        ],
        notes="pytorch_optimizer.AdamP(weight_decouple=True, fixed_decay=False) = the authors' AdamP "
        "(clovaai) except eps placement: pytorch_optimizer divides by (sqrt(v) + eps)/sqrt(bc2), the "
        "authors by sqrt(v)/sqrt(bc2) + eps; the spec follows pytorch_optimizer. delta is moved to 0.6-3 "
        "so that the channel and the layer projection both happen with random gradients "
        "(test_adamp_configs_reach_every_projection_branch).",
    ),
    OptimInfo(
        spec="sgdp",
        cls="SGDP",
        oracle=_po(po.SGDP, weight_decouple=True, fixed_decay=False),
        state_map={"momentum_buffer": "momentum"},
        configs=[
            {},
            {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1, "delta": 3.0, "wd_ratio": 0.5,
             "eps": 1e-6},
            {"lr": 0.05, "momentum": 0.5, "nesterov": True, "delta": 0.9, "weight_decay": 0.05, "maximize": True},
            {"delta": 0.6, "weight_decay": 0.1},
        ],
        notes="pytorch_optimizer.SGDP(weight_decouple=True, fixed_decay=False) = the authors' SGDP: buffer "
        "from zeros, decay lr*wd*wd_ratio/(1 - momentum). pytorch_optimizer's state is named 'momentum', "
        "which the spec cannot use (a state may not share the hyperparameter's name): ours is "
        "'momentum_buffer', so checkpoints are not interchangeable.",
    ),
    OptimInfo(
        spec="lamb",
        cls="Lamb",
        oracle=_po(po.Lamb, weight_decouple=False, fixed_decay=False, rectify=False, degenerated_to_sgd=False,
                   adam=False, pre_norm=False),
        state_map=_same("exp_avg", "exp_avg_sq", "weight_norm", "adam_norm", "trust_ratio"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-8, "weight_decay": 0.1},
            {"grad_averaging": False, "maximize": True, "weight_decay": 0.01, "eps": 1e-4},
        ],
        notes="pytorch_optimizer.Lamb(weight_decouple=False, rectify=False, adam=False, pre_norm=False): the "
        "weight decay enters the trust-ratio norm as in the paper's Algorithm 2 (r + lambda x). Differences "
        "from the paper kept by the oracle and the spec: phi(||x||) = min(||x||, 10); ratio = phi/(||u|| + "
        "eps), 1 when either norm is 0; only the first moment's bias correction, applied as lr/bc1 outside "
        "the ratio; no bc2. weight_norm/adam_norm/trust_ratio are scalar states, as pytorch_optimizer keeps "
        "them. Shapes: the (129,) tensor's norm (~11) exceeds 10, so the clamp is exercised.",
    ),
    OptimInfo(
        spec="lars",
        cls="LARS",
        oracle=_po(po.LARS),
        state_map=_same("momentum_buffer"),
        configs=[
            {},
            {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.5, "dampening": 0.1, "trust_coefficient": 0.02},
            {"nesterov": True, "maximize": True, "weight_decay": 0.01, "lr": 0.1},
            {"momentum": 0.0, "lr": 0.1, "weight_decay": 0.05},  # no buffer
        ],
        notes="pytorch_optimizer.LARS (no flags to fix) = You et al. 2017, Algorithm 1 with dampening = 0 "
        "and nesterov = False: local lr = eta ||w|| / (||g|| + beta ||w||) (1 if ||w|| or the denominator "
        "is 0), v = m v + lr_local (g + beta w) (times lr outside: the buffer holds v/lr), w -= lr v. "
        "As common practice (not the paper), tensors with ndim <= 1 get plain momentum SGD without weight "
        "decay or trust ratio.",
    ),
    OptimInfo(
        spec="mars_adamw",
        cls="MARSAdamW",
        oracle=_po(po.MARS, mars_type="adamw", weight_decouple=True, fixed_decay=False, ams_bound=False,
                   cautious=False),
        state_map=_same("exp_avg", "exp_avg_sq", "last_grad"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.9, 0.95), "gamma": 0.1, "weight_decay": 0.1, "eps": 1e-6},
            {"optimize_1d": True, "maximize": True, "gamma": 0.01, "weight_decay": 0.05},
            {"lr_1d": 0.01, "betas_1d": (0.8, 0.99), "weight_decay_1d": 0.0, "lr": 1e-3},
        ],
        # pytorch_optimizer's 1-D lr is group lr * (lr_1d / lr at construction); ours is lr_1d.
        oracle_group=lambda group, config: dict(group, lr_1d_factor=config.get("lr_1d", 3e-3) / group["lr"]),
        notes="pytorch_optimizer.MARS(mars_type='adamw', ams_bound=False, cautious=False) = the approximate "
        "MARS-AdamW of Yuan et al. 2024 (authors' code): c = g + gamma beta1/(1-beta1) (g - g_prev) with "
        "g_prev = 0 on the first step, c /= ||c|| if ||c|| > 1, AdamW on c. Tensors with ndim < 2 (unless "
        "optimize_1d) get plain AdamW on g with lr_1d, betas_1d, weight_decay_1d. Differences: eps "
        "placement (sqrt(v + 1e-15) + eps)/sqrt(bc2) instead of the authors' sqrt(v)/sqrt(bc2) + eps; "
        "pytorch_optimizer's 1-D lr is lr * (lr_1d/lr at construction), the spec's lr_1d (equal unless lr "
        "is scheduled). " + _EPS_UNDER_SQRT,
    ),
    # --- torch mirrors ---------------------------------------------------------------------------
    OptimInfo(
        spec="adafactor",
        cls="Adafactor",
        oracle=torch.optim.Adafactor,
        torch_mirror=True,
        state_map=_same("row_var", "col_var", "variance"),
        configs=[
            {},  # eps1 = None: the dtype's machine epsilon
            {"lr": 0.05, "beta2_decay": -0.5, "eps": (1e-20, 1e-2), "d": 2.0, "weight_decay": 0.1},
            {"eps": (1e-30, 1e-3), "maximize": True, "lr": 0.001, "d": 1.0},
        ],
        notes="torch.optim.Adafactor factors over the LAST two dimensions (row_var (..., R, 1), col_var "
        "(..., 1, C)); the language's rows/cols are (shape[0], numel/shape[0]), equal only for 2-D "
        "tensors, so shapes have no 3-D tensor. The default eps=(None, 1e-3) means eps1 = "
        "torch.finfo(param.dtype).eps.",
    ),
    OptimInfo(
        spec="nadam",
        cls="NAdam",
        oracle=torch.optim.NAdam,
        torch_mirror=True,
        state_map=_same("exp_avg", "exp_avg_sq", "mu_product"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1, "momentum_decay": 0.01},
            {"decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True},
        ],
        state_tolerance={"mu_product": 2.4e-7},  # two float32 ulps: torch keeps it in float32
        # torch's float32 mu_product rounds differently from ours (fl32(mp * fl32(mu)) vs
        # fl32(mp * mu)); over 25 steps that reaches ~3e-10 in fp64 params and ~1e-9 in exp_avg.
        tolerance={torch.float64: 2e-9, torch.float32: 1e-5},
        notes="mu_product is a host scalar kept like torch does: a 0-dim float32 CPU tensor (float64 when the "
        "default dtype is float64), updated as tensor *= python float (rounded to float32 every step). "
        "Computing it in float64 instead changes fp64 params by ~1e-11 relative but the mu_product state "
        "by ~1e-7.",
    ),
    # --- gradient centralization ------------------------------------------------------------------
    OptimInfo(
        spec="gc_sgd",
        cls="GCSGD",
        oracle=tr.GCSGD,
        state_map=_same("momentum_buffer"),
        shapes=((7, 13), (3, 4, 5), (129,), ()),
        configs=[
            {},
            {"lr": 0.01, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.1},
            {"lr": 0.05, "momentum": 0.5, "nesterov": True, "maximize": True, "weight_decay": 0.01},
        ],
        notes="Oracle: pytorch_optimizer-style centralize_gradient (validated against it) then torch.optim.SGD. "
        "The GC authors' SGD_GC centralizes g + wd*p; this composition centralizes g and adds wd*p after "
        "(equal when weight_decay = 0).",
    ),
    OptimInfo(
        spec="gc_adam",
        cls="GCAdam",
        oracle=tr.GCAdam,
        state_map=ADAMW_STATES,
        shapes=((7, 13), (3, 4, 5), (129,), ()),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"amsgrad": True, "maximize": True, "weight_decay": 0.05},
            {"decoupled_weight_decay": True, "weight_decay": 0.1, "lr": 0.01},
        ],
        notes="Oracle: centralize then torch.optim.Adam. The GC authors' Adam_GC centralizes g + wd*p; here "
        "L2 decay is added after centralization.",
    ),
    # --- Polyak step sizes (loss-dependent) -------------------------------------------------------
    OptimInfo(
        spec="sps",
        cls="SPS",
        oracle=tr.SPS,
        state_map={},
        loss_fn=least_squares_loss,
        global_reduction=True,
        configs=[
            {},
            {"lr": 0.5, "c": 0.5, "f_star": -0.1, "eps": 1e-3},
        ],
        notes="Transcription (Loizou et al. 2021 SPS, optax's eps); checked against optax.polyak_sgd's "
        "documented numbers. The step size uses ||g||^2 over all parameters and the step's loss.",
    ),
    OptimInfo(
        spec="sps_max",
        cls="SPSMax",
        oracle=tr.SPSMax,
        state_map={},
        loss_fn=least_squares_loss,
        global_reduction=True,
        configs=[
            {},
            {"lr": 0.5, "c": 0.5, "f_star": -0.1, "eps": 1e-3, "max_lr": 0.01},  # the cap binds
        ],
        notes="optax.polyak_sgd's form; optax zeroes the step when ||g||^2 + eps <= machine epsilon, the spec "
        "and transcription only when it is exactly 0.",
    ),
    OptimInfo(
        spec="sps_momentum",
        cls="SPSMomentum",
        oracle=tr.SPSMomentum,
        state_map=_same("momentum_buffer"),
        loss_fn=least_squares_loss,
        global_reduction=True,
        configs=[
            {},
            {"lr": 0.5, "momentum": 0.5, "c": 0.5, "f_star": -0.1, "eps": 1e-3, "max_lr": 0.01},
        ],
        notes="MomSPS_max (Oikonomou & Loizou 2024) in buffer form; checked against the iterate form.",
    ),
]

_DRAFTS: set[str] = set()  # specs not yet expressible (kept in drafts/specs); none now
ORACLE_RECORDS = RECORDS  # every record, drafts included: their oracles are validated too
RECORDS = [r for r in RECORDS if r.spec not in _DRAFTS]
