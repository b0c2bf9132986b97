"""Reference implementation vs outside oracle: params and every state, every step, 25 steps,
fp64 and fp32."""

import pytest
import torch

from harness import lockstep
from records import ALL_RECORDS

CASES = [
    pytest.param(record, i, config, id=f"{record.spec}-{i}")
    for record in ALL_RECORDS
    if record.oracle is not None
    for i, config in enumerate(record.configs)
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("record, index, config", CASES)
def test_reference_matches_oracle(record, index, config, dtype):
    ours = record.generated
    oracle_kwargs = record.oracle_kwargs(config) if record.oracle_kwargs else config
    worst = lockstep(
        lambda ps: record.oracle(ps, **oracle_kwargs),
        lambda ps: ours(ps, backend="torch", **config),
        record.shapes,
        dtype,
        steps=25,
        state_map={theirs: ours_name for ours_name, theirs in (record.state_map or {}).items()},
        loss_fn=record.loss_fn,
    )
    tolerance = record.tolerance[dtype]
    assert worst, "nothing was compared"
    limits = {k: max(tolerance, record.state_tolerance.get(k, 0.0)) for k in worst}
    bad = {k: v for k, v in worst.items() if not v <= limits[k]}
    assert not bad, f"{record.spec} {config} {dtype}: relative errors over {tolerance}: {bad} (all: {worst})"
