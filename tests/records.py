"""The optimizer database: one `OptimInfo` per shipped spec. Every test module iterates over
`ALL_RECORDS`, so adding a spec means adding its record here (or in a records_*.py file)."""

from __future__ import annotations

import torch

from harness import OptimInfo

ADAM_STATES = {"exp_avg": "exp_avg", "exp_avg_sq": "exp_avg_sq", "max_exp_avg_sq": "max_exp_avg_sq"}

TORCH_RECORDS = [
    OptimInfo(
        spec="adam",
        cls="Adam",
        oracle=torch.optim.Adam,
        torch_mirror=True,
        state_map=ADAM_STATES,
        configs=[
            {},
            {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1},
            {"amsgrad": True, "maximize": True, "weight_decay": 0.05},
            {"decoupled_weight_decay": True, "weight_decay": 0.1, "lr": 0.01},
        ],
    ),
]


def _collect():
    records = list(TORCH_RECORDS)
    for module_name in ("records_torch", "records_papers", "records_reductions"):
        try:
            module = __import__(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        records += module.RECORDS
    return records


ALL_RECORDS = _collect()
