"""Independent plain-PyTorch transcriptions, the oracles for specs that pytorch_optimizer does not
implement. Each is written from the paper's equations (or, for HOME3, from the formula its spec's
docstring states), not from the spec or the generated code, in the style of a hand-written
torch.optim optimizer: in-place ops, one loop over parameters.
"""

from __future__ import annotations

import torch


class AdamAtan2(torch.optim.Optimizer):
    """Adam-atan2 (Everett et al., "Scaling Exponents Across Parameterizations and Optimizers",
    ICML 2024): Adam's m_hat / (sqrt(v_hat) + eps) replaced by a * atan2(m_hat, b * sqrt(v_hat)),
    with decoupled weight decay.

        m_t = beta1 m + (1 - beta1) g          v_t = beta2 v + (1 - beta2) g^2
        m_hat = m_t / (1 - beta1^t)            v_hat = v_t / (1 - beta2^t)
        theta <- theta (1 - lr wd) - lr a atan2(m_hat, b sqrt(v_hat))
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), a=1.27, b=1.0, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, a=a, b=b, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, a, b, wd = group["lr"], group["a"], group["b"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["t"] += 1
                t, m, v = state["t"], state["m"], state["v"]
                p.mul_(1 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                p.add_(torch.atan2(m_hat, b * v_hat.sqrt()), alpha=-lr * a)


class HOME3(torch.optim.Optimizer):
    """The third-power momentum optimizer of specs/home3.opt, from the formula in its docstring:

        m  = beta1 m  + (1 - beta1) g          v = beta2 v + (1 - beta2) g^2
        m3 = beta3 m3 + (1 - beta3) g^3        (state kept in float32)
        u  = (1 - gamma) m / (1 - beta1^t) + gamma cbrt(m3 / (1 - beta3^t))
        theta <- theta (1 - lr wd) - lr u / (sqrt(v / (1 - beta2^t)) + eps)

    m3 is updated in the parameter's precision and rounded to float32 only when stored, so the
    step uses the unrounded value.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999, 0.9), gamma=0.5, eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            lr, gamma, eps, wd = group["lr"], group["gamma"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["t"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                    state["m3"] = torch.zeros_like(p, dtype=torch.float32)
                state["t"] += 1
                t, m, v = state["t"], state["m"], state["v"]
                p.mul_(1 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m3 = state["m3"].to(g.dtype).mul_(beta3).add_(g.pow(3), alpha=1 - beta3)
                state["m3"].copy_(m3)
                m3_hat = m3 / (1 - beta3**t)
                cube_root = m3_hat.abs().pow(1 / 3).copysign(m3_hat)
                u = (1 - gamma) * (m / (1 - beta1**t)) + gamma * cube_root
                denom = (v / (1 - beta2**t)).sqrt().add_(eps)
                p.addcdiv_(u, denom, value=-lr)

