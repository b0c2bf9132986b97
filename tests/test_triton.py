"""Triton kernel (interpreter on CPU) vs the PyTorch reference: params and every state, every step,
for every record and config, in float32, bfloat16 and float16 params."""

import pytest
import torch

from harness import lockstep
from records import ALL_RECORDS

# Sizes that straddle BLOCK_SIZE (1024), a 0-dim tensor and a zero-size tensor.
SHAPES = ((33, 31), (1025,), (), (0, 3))
STEPS = 4
# Relative to each tensor's largest value. Every run restarts each step from identical values
# (resync), so these bound one step's rounding: two units in the last place (bf16 2^-7, fp16 2^-10).
# float32 resyncs too: the CPU reference uses torch's fused ops (`add_(x, alpha=c)`, `addcmul_`,
# one rounding where the interpreted kernel rounds a product and a sum), and over steps a one-ulp
# difference compounds on a one-element tensor whose update cancels (SGD momentum, 0-dim param).
TRITON_TOLERANCE = {torch.float32: 2e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}

CASES = [
    pytest.param(record, config, id=f"{record.spec}-{i}")
    for record in ALL_RECORDS
    for i, config in enumerate(record.configs)
]


def _all_states(optimizer_cls, config, needs_loss):
    probe = [torch.zeros(3, requires_grad=True)]
    opt = optimizer_cls(probe, backend="torch", **config)
    probe[0].grad = torch.ones(3)
    opt.step(loss=torch.tensor(1.0)) if needs_loss else opt.step()
    return [k for k in opt.state[probe[0]] if k != "step"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("record, config", CASES)
def test_triton_matches_reference(record, config, dtype):
    cls = record.generated
    states = _all_states(cls, config, record.loss_fn is not None)
    worst = lockstep(
        lambda ps: cls(ps, backend="torch", **config),
        lambda ps: cls(ps, backend="triton", **config),
        SHAPES,
        dtype,
        steps=STEPS,
        state_map={s: s for s in states},
        resync=True,
        loss_fn=record.loss_fn,
    )
    assert set(worst) == {"param", *states}
    tolerance = TRITON_TOLERANCE[dtype]
    bad = {k: v for k, v in worst.items() if not v <= tolerance}
    assert not bad, f"{record.spec} {config} {dtype}: {bad}"
