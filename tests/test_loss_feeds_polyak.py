"""A generated loss drives a loss-reading optimizer: the loss tensor goes straight into
`step(loss=...)` (no .item()), and the Polyak step it produces is the one torch's MSE gives."""

import torch

from generated.mse import MSELoss
from generated.sps_max import SPSMax


def _fit(loss_module, backend, steps=30):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(32, 8, generator=gen, dtype=torch.float64)
    target = a @ torch.randn(8, generator=gen, dtype=torch.float64)
    w = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = SPSMax([w], backend=backend)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_module(a @ w, target)
        loss.backward()
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0
        opt.step(loss=loss.detach())
        losses.append(float(loss.detach()))
    return w.detach(), losses


def test_generated_loss_feeds_polyak_step_like_torch_mse():
    ours_w, ours_losses = _fit(MSELoss(), "torch")
    torch_w, torch_losses = _fit(torch.nn.MSELoss(), "torch")
    assert torch.allclose(ours_w, torch_w, rtol=1e-10, atol=1e-12)
    assert ours_losses[-1] < 1e-3 * ours_losses[0]  # SPS_max with f* = 0 converges untuned


def test_generated_loss_feeds_polyak_step_in_triton_interpreter():
    w_triton, losses = _fit(MSELoss(), "triton", steps=5)
    w_torch, _ = _fit(MSELoss(), "torch", steps=5)
    assert torch.allclose(w_triton, w_torch, rtol=1e-5, atol=1e-6)
    assert losses[-1] < losses[0]
