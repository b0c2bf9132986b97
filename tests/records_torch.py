"""Records for the specs that mirror torch.optim (besides Adam, which lives in records.py): the
oracle is the torch class itself, state names are identical, and the configs between them set
every flag and move every hyperparameter off its default. `configs[-1]` is the richest one (the
runtime tests use it)."""

from __future__ import annotations

import torch

from harness import OptimInfo


def _same(*names):
    return {name: name for name in names}


RECORDS = [
    OptimInfo(
        spec="sgd",
        cls="SGD",
        oracle=torch.optim.SGD,
        torch_mirror=True,
        state_map=_same("momentum_buffer"),
        configs=[
            {},  # momentum 0: no state at all
            {"lr": 0.01, "momentum": 0.9, "dampening": 0.1},
            {"lr": 0.05, "maximize": True, "weight_decay": 0.1},
            {"lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01, "maximize": True},
        ],
    ),
    OptimInfo(
        spec="adamw",
        cls="AdamW",
        oracle=torch.optim.AdamW,
        torch_mirror=True,
        state_map=_same("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"weight_decay": 0.0},
            {"lr": 0.005, "amsgrad": True, "maximize": True, "weight_decay": 0.05},
        ],
    ),
    OptimInfo(
        spec="adagrad",
        cls="Adagrad",
        oracle=torch.optim.Adagrad,
        torch_mirror=True,
        state_map=_same("sum"),
        configs=[
            {},
            {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.5, "eps": 1e-6},
            {"lr": 0.05, "lr_decay": 0.05, "weight_decay": 0.02, "initial_accumulator_value": 0.1, "maximize": True},
        ],
    ),
    OptimInfo(
        spec="rmsprop",
        cls="RMSprop",
        oracle=torch.optim.RMSprop,
        torch_mirror=True,
        state_map=_same("square_avg", "momentum_buffer", "grad_avg"),
        configs=[
            {},
            {"lr": 0.001, "alpha": 0.9, "eps": 1e-6, "weight_decay": 0.1, "momentum": 0.9},
            {"centered": True, "maximize": True},
            {"lr": 0.002, "alpha": 0.95, "centered": True, "momentum": 0.5, "weight_decay": 0.05, "maximize": True},
        ],
    ),
    OptimInfo(
        spec="adamax",
        cls="Adamax",
        oracle=torch.optim.Adamax,
        torch_mirror=True,
        state_map=_same("exp_avg", "exp_inf"),
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.005, "maximize": True, "weight_decay": 0.05},
        ],
    ),
    OptimInfo(
        spec="adadelta",
        cls="Adadelta",
        oracle=torch.optim.Adadelta,
        torch_mirror=True,
        state_map=_same("square_avg", "acc_delta"),
        configs=[
            {},
            {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1},
            {"lr": 0.8, "rho": 0.95, "maximize": True, "weight_decay": 0.05},
        ],
    ),
    OptimInfo(
        spec="radam",
        cls="RAdam",
        oracle=torch.optim.RAdam,
        torch_mirror=True,
        state_map=_same("exp_avg", "exp_avg_sq"),
        # rho_t passes 5 at step 6 (beta2 = 0.999 or 0.99): both branches of `rho_t > 5` run
        # within the 25 steps compared.
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"lr": 0.005, "decoupled_weight_decay": True, "weight_decay": 0.1, "maximize": True},
        ],
    ),
]
