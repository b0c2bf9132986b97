"""One record per shipped loss spec (specs/losses/*.opt); every test in tests/test_losses*.py
iterates over these. A record says how to build inputs, which settings to try, and the outside
oracle: torch.nn.functional where torch has the loss, else a plain transcription (differentiated
by autograd) written independently of the spec."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

N, C = 5, 7  # rows and classes (C is not a power of two: the kernels' masked lanes are exercised)
SHAPE = (3, 7)  # elementwise losses


def _reduce(loss, reduction, denominator=None):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (loss.numel() if denominator is None else denominator)


# -- transcriptions (losses torch does not have) -------------------------------------------------


def focal_transcription(x, h, reduction):
    """torchvision.ops.sigmoid_focal_loss, transcribed (torchvision is not a dependency)."""
    inputs, targets = x["inputs"], x["targets"]
    p = torch.sigmoid(inputs)
    ce = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * ((1 - p_t) ** h["gamma"])
    if h["alpha"] >= 0:
        loss = (h["alpha"] * targets + (1 - h["alpha"]) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def gce_transcription(x, h, reduction):
    """Comp-sum loss from its definition, Phi_tau(u) with u = sum_{y' != y} exp(h_y' - h_y), in log
    space (log u by logsumexp over the other classes, log(1 + u) = logaddexp(log u, 0)) so that
    it stays finite for logits of 1e4."""
    logits, target = x["input"], x["target"]
    keep = target != h["ignore_index"]
    safe = torch.where(keep, target, torch.zeros_like(target))
    h_y = logits.gather(1, safe[:, None])
    is_y = torch.zeros_like(logits, dtype=torch.bool).scatter(1, safe[:, None], True)
    log_u = torch.logsumexp((logits - h_y).masked_fill(is_y, -torch.inf), 1)
    log1p_u = torch.logaddexp(log_u, torch.zeros_like(log_u))
    tau = h["tau"]
    phi = log1p_u if tau == 1 else (torch.exp((1 - tau) * log1p_u) - 1) / (1 - tau)
    loss = torch.where(keep, phi, torch.zeros_like(phi))
    return _reduce(loss, reduction, keep.sum())


def kd_oracle(x, h, reduction):
    t = h["temperature"]
    s, q = F.log_softmax(x["input"] / t, -1), F.log_softmax(x["target"] / t, -1)
    if reduction == "none":
        return F.kl_div(s, q, reduction="none", log_target=True).sum(-1) * t * t
    return F.kl_div(s, q, reduction="batchmean" if reduction == "mean" else "sum", log_target=True) * t * t


def bt_transcription(x, h, reduction):
    return _reduce(-F.logsigmoid(x["chosen"] - x["rejected"] - h["margin"]), reduction)


# -- records --------------------------------------------------------------------------------------


@dataclass
class LossInfo:
    module: str  # generated/<module>.py, specs/losses/<module>.opt
    cls: str
    functional: str
    make: Callable  # (dtype, generator, scale) -> dict of input tensors (optional inputs included)
    oracle: Callable  # (inputs, hypers, reduction) -> value, differentiable by autograd
    oracle_name: str
    configs: list = field(default_factory=lambda: [{}])  # hyperparameters / optional inputs to try
    torch_class: str | None = None  # the torch.nn class the module mirrors
    row: bool = False
    ignore_index: bool = False
    reduction: str = "mean"  # the default

    def load(self):
        return importlib.import_module(f"generated.{self.module}")


def _regression(dtype, gen, scale):
    return {"input": scale * torch.randn(SHAPE, dtype=dtype, generator=gen),
            "target": scale * torch.randn(SHAPE, dtype=dtype, generator=gen)}


def _binary(dtype, gen, scale, names=("input", "target")):
    return {names[0]: scale * torch.randn(SHAPE, dtype=dtype, generator=gen),
            names[1]: torch.rand(SHAPE, dtype=dtype, generator=gen)}


def _bce(dtype, gen, scale):
    x = _binary(dtype, gen, scale)
    x["weight"] = torch.rand(SHAPE[-1], dtype=dtype, generator=gen) + 0.5  # broadcast to the input
    x["pos_weight"] = torch.rand(SHAPE[-1], dtype=dtype, generator=gen) + 0.5
    return x


def _classes(dtype, gen, scale, weight=False):
    target = torch.randint(0, C, (N,), generator=gen)
    target[1] = -100  # a masked row
    x = {"input": scale * torch.randn(N, C, dtype=dtype, generator=gen), "target": target}
    if weight:
        x["weight"] = torch.rand(C, dtype=dtype, generator=gen) + 0.5
    return x


def _kd(dtype, gen, scale):
    return {"input": scale * torch.randn(N, C, dtype=dtype, generator=gen),
            "target": scale * torch.randn(N, C, dtype=dtype, generator=gen)}


def _pairs(dtype, gen, scale):
    return {"chosen": scale * torch.randn(SHAPE, dtype=dtype, generator=gen),
            "rejected": scale * torch.randn(SHAPE, dtype=dtype, generator=gen)}


def _drop(x, *names):
    return {k: v for k, v in x.items() if k not in names}


LOSSES = [
    LossInfo("mse", "MSELoss", "mse_loss", _regression,
             lambda x, h, r: F.mse_loss(x["input"], x["target"], reduction=r), "F.mse_loss", torch_class="MSELoss"),
    LossInfo("l1", "L1Loss", "l1_loss", _regression,
             lambda x, h, r: F.l1_loss(x["input"], x["target"], reduction=r), "F.l1_loss", torch_class="L1Loss"),
    LossInfo("huber", "HuberLoss", "huber_loss", _regression,
             lambda x, h, r: F.huber_loss(x["input"], x["target"], reduction=r, delta=h["delta"]), "F.huber_loss",
             configs=[{"delta": 1.0}, {"delta": 0.3}], torch_class="HuberLoss"),
    LossInfo("smooth_l1", "SmoothL1Loss", "smooth_l1_loss", _regression,
             lambda x, h, r: F.smooth_l1_loss(x["input"], x["target"], reduction=r, beta=h["beta"]),
             "F.smooth_l1_loss", configs=[{"beta": 1.0}, {"beta": 0.4}], torch_class="SmoothL1Loss"),
    LossInfo("bce_with_logits", "BCEWithLogitsLoss", "bce_with_logits_loss", _bce,
             lambda x, h, r: F.binary_cross_entropy_with_logits(
                 x["input"], x["target"], weight=x.get("weight"), reduction=r, pos_weight=x.get("pos_weight")),
             "F.binary_cross_entropy_with_logits",
             configs=[{"drop": ("weight", "pos_weight")}, {}], torch_class="BCEWithLogitsLoss"),
    LossInfo("sigmoid_focal", "SigmoidFocalLoss", "sigmoid_focal_loss", lambda d, g, s: _binary(d, g, s, ("inputs", "targets")),
             focal_transcription, "transcription of torchvision.ops.sigmoid_focal_loss",
             configs=[{"alpha": 0.25, "gamma": 2.0}, {"alpha": -1.0, "gamma": 1.5}], reduction="none"),
    LossInfo("cross_entropy", "CrossEntropyLoss", "cross_entropy_loss", lambda d, g, s: _classes(d, g, s, weight=True),
             lambda x, h, r: F.cross_entropy(x["input"], x["target"], weight=x.get("weight"), reduction=r,
                                             ignore_index=int(h["ignore_index"]), label_smoothing=h["label_smoothing"]),
             "F.cross_entropy",
             configs=[{"ignore_index": -100, "label_smoothing": 0.0, "drop": ("weight",)},
                      {"ignore_index": -100, "label_smoothing": 0.1},
                      {"ignore_index": 2, "label_smoothing": 0.0}],
             torch_class="CrossEntropyLoss", row=True, ignore_index=True),
    LossInfo("generalized_cross_entropy", "GeneralizedCrossEntropyLoss", "generalized_cross_entropy_loss",
             _classes, gce_transcription, "transcription of the comp-sum definition",
             configs=[{"tau": 1.7, "ignore_index": -100}, {"tau": 1.0, "ignore_index": -100},
                      {"tau": 0.0, "ignore_index": -100}, {"tau": 2.0, "ignore_index": -100}],
             row=True, ignore_index=True),
    LossInfo("distillation_kl", "DistillationKLLoss", "distillation_kl_loss", _kd, kd_oracle,
             "F.kl_div(log_softmax(s/T), log_softmax(t/T), log_target=True) * T^2",
             configs=[{"temperature": 1.0}, {"temperature": 3.0}], row=True),
    LossInfo("bradley_terry", "BradleyTerryLoss", "bradley_terry_loss", _pairs, bt_transcription,
             "transcription -F.logsigmoid(chosen - rejected - margin)",
             configs=[{"margin": 0.0}, {"margin": 0.5}]),
]
LOSS_IDS = [info.module for info in LOSSES]


def split_config(info: LossInfo, config: dict, x: dict):
    """(inputs with the config's dropped optional inputs removed, hyperparameters as the module
    takes them)."""
    config = dict(config)
    x = _drop(x, *config.pop("drop", ()))
    if "ignore_index" in config and "target" in x:  # the masked row carries this config's ignore_index
        x["target"] = torch.where(x["target"] == -100, int(config["ignore_index"]), x["target"])
    return x, config


def hypers_of(info: LossInfo, module, config: dict) -> dict:
    """Every hyperparameter (the functional's defaults, then the config's values), as floats."""
    import inspect

    params = inspect.signature(getattr(module, info.functional)).parameters
    h = {name: float(params[name].default) for name in module._HYPERS}
    h.update({k: float(v) for k, v in config.items()})
    return h
