"""Oracles for the specs that use reductions, per-row/column/scalar state or the loss (issue 3),
where no outside class implements the algorithm.

Two kinds:

* compositions of outside code: `torch.nn.utils` clipping or a gradient-centralization step in
  front of the unmodified `torch.optim` class (AdamWClipGlobal, AdamWClipTensor, AdamWClipValue,
  GCSGD, GCAdam);
* independent plain-PyTorch transcriptions written from the papers' equations (AGRAdamW, AGRAdan,
  SPS, SPSMax, SPSMomentum): in-place ops, one loop over parameters, not derived from any spec.

Loss-dependent optimizers (the SPS family) take the loss from `step(closure)` (the closure returns
a 0-dim tensor) or from `step(loss=tensor)`, and raise a clear error when given neither.
"""

from __future__ import annotations

import torch


def centralize(grad: torch.Tensor) -> torch.Tensor:
    """Gradient centralization (Yong et al., ECCV 2020, eq. 4): for a tensor with more than one
    dimension, subtract from each row (first index, the output channel) its mean over every other
    dimension. In place; returns grad."""
    if grad.dim() > 1:
        grad.sub_(grad.mean(dim=tuple(range(1, grad.dim())), keepdim=True))
    return grad


def agr(grad: torch.Tensor) -> torch.Tensor:
    """Adaptive gradient regularization (Jiang et al., 2024, eq. 5-6): alpha = |g| / sum|g| over
    the whole tensor, g <- g - g * alpha = (1 - alpha) g. Returns a new tensor.

    The authors' code divides 0 by 0 for an all-zero gradient (NaN); here the result is the zero
    gradient, the limit of (1 - alpha) g as g -> 0."""
    total = grad.abs().sum()
    if total == 0:
        return grad.clone()
    return grad - grad * (grad.abs() / total)


def _params_with_grad(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _resolve_loss(closure, loss):
    if closure is not None:
        if loss is not None:
            raise ValueError("pass either a closure or loss=, not both")
        with torch.enable_grad():
            loss = closure()
    if loss is None:
        raise RuntimeError(
            "this optimizer needs the loss of the step: call step(closure) with a closure that "
            "returns the loss, or step(loss=loss_tensor)"
        )
    return loss


def _add_default(optimizer, name, value):
    optimizer.defaults[name] = value
    for group in optimizer.param_groups:
        group.setdefault(name, value)


# ---------------------------------------------------------------------------------------------
# Clipping in front of torch.optim.AdamW (compositions of outside code)


class AdamWClipGlobal(torch.optim.AdamW):
    """`torch.nn.utils.clip_grad_norm_(every parameter with a grad, max_norm)` followed by
    `torch.optim.AdamW`: g <- g * min(max_norm / (||all grads||_2 + 1e-6), 1). With several groups
    the norm is over all of them and each group scales by its own max_norm."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False, max_norm=1.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=False)
        _add_default(self, "max_norm", max_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for p in _params_with_grad(self)]
        if grads:
            total = torch.nn.utils.get_total_norm(grads, foreach=False)
            for group in self.param_groups:
                ps = [p for p in group["params"] if p.grad is not None]
                if ps:
                    torch.nn.utils.clip_grads_with_norm_(ps, group["max_norm"], total, foreach=False)
        super().step()
        return loss


class AdamWClipTensor(torch.optim.AdamW):
    """Per-tensor norm clipping, `torch.nn.utils.clip_grad_norm_([p], max_norm)` for each
    parameter separately, followed by `torch.optim.AdamW`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False, max_norm=1.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=False)
        _add_default(self, "max_norm", max_norm)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    torch.nn.utils.clip_grad_norm_([p], group["max_norm"], foreach=False)
        super().step()
        return loss


class AdamWClipValue(torch.optim.AdamW):
    """`torch.nn.utils.clip_grad_value_(params, clip_value)` (g <- clamp(g, -c, c)) followed by
    `torch.optim.AdamW`."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False, clip_value=1.0):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, foreach=False)
        _add_default(self, "clip_value", clip_value)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            ps = [p for p in group["params"] if p.grad is not None]
            if ps:
                torch.nn.utils.clip_grad_value_(ps, group["clip_value"], foreach=False)
        super().step()
        return loss


# ---------------------------------------------------------------------------------------------
# Gradient centralization in front of torch.optim (compositions)


class GCSGD(torch.optim.SGD):
    """Gradient centralization of the loss gradient, then `torch.optim.SGD` (which adds
    weight_decay * p to the centralized gradient)."""

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 maximize=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov, maximize=maximize, foreach=False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for p in _params_with_grad(self):
            centralize(p.grad)
        super().step()
        return loss


class GCAdam(torch.optim.Adam):
    """Gradient centralization of the loss gradient, then `torch.optim.Adam` (L2 weight decay added
    after centralization, or decoupled with decoupled_weight_decay)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                 maximize=False, decoupled_weight_decay=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=decoupled_weight_decay, foreach=False)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for p in _params_with_grad(self):
            centralize(p.grad)
        super().step()
        return loss


# ---------------------------------------------------------------------------------------------
# AGR (Jiang et al., "An Adaptive Gradient Regularization Method", 2024): transcriptions


class AGRAdamW(torch.optim.Optimizer):
    """AGR composed with AdamW (Loshchilov & Hutter, ICLR 2019, in torch.optim.AdamW's form),
    written out:

        g' = g - g |g| / sum|g|                     (AGR, per tensor; 0 for an all-zero g)
        g' = -g' if maximize
        theta <- theta (1 - lr wd)
        m = beta1 m + (1 - beta1) g'                v = beta2 v + (1 - beta2) g'^2
        v_max = max(v_max, v) if amsgrad
        theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v or v_max) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                 maximize=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = agr(p.grad)
                if group["maximize"]:
                    g = -g
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if group["amsgrad"]:
                        state["max_exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * wd)
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                if group["amsgrad"]:
                    torch.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
                    v = state["max_exp_avg_sq"]
                denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
        return loss


class AGRAdan(torch.optim.Optimizer):
    """AGR composed with Adan (Xie et al., 2022, Algorithm 1, in its authors' code form: betas are
    1 minus the paper's, bias-corrected EMAs, proximal weight decay), written out:

        g' = g - g |g| / sum|g|                     (AGR, per tensor; 0 for an all-zero g)
        d  = g' - g'_prev  (0 on the first step)
        m = beta1 m + (1 - beta1) g'     n_d = beta2 n_d + (1 - beta2) d
        v = beta3 v + (1 - beta3) (g' + beta2 d)^2
        theta <- (theta - lr (m / bc1 + beta2 n_d / bc2) / (sqrt(v / bc3) + eps)) / (1 + lr wd)

    State names follow specs/adan.opt; previous_grad holds the regularized gradient, as the AGR
    authors' Adan_AGR does (the difference is taken between regularized gradients)."""

    def __init__(self, params, lr=1e-3, betas=(0.98, 0.92, 0.99), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2, beta3 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = agr(p.grad)
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_diff"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["previous_grad"] = g.clone()  # d = 0 on the first step
                state["step"] += 1
                t = state["step"].item()
                d = g - state["previous_grad"]
                state["exp_avg"].mul_(beta1).add_(g, alpha=1 - beta1)
                state["exp_avg_diff"].mul_(beta2).add_(d, alpha=1 - beta2)
                nesterov = g + beta2 * d
                state["exp_avg_sq"].mul_(beta3).addcmul_(nesterov, nesterov, value=1 - beta3)
                state["previous_grad"].copy_(g)
                denom = (state["exp_avg_sq"].sqrt() / (1 - beta3**t) ** 0.5).add_(eps)
                direction = state["exp_avg"] / (1 - beta1**t) + beta2 * state["exp_avg_diff"] / (1 - beta2**t)
                p.addcdiv_(direction, denom, value=-lr).div_(1 + lr * wd)
        return loss


# ---------------------------------------------------------------------------------------------
# Stochastic Polyak step sizes (Loizou, Vaswani, Laradji & Lacoste-Julien, AISTATS 2021)


class _PolyakBase(torch.optim.Optimizer):
    """Shared: the loss of the step and the squared gradient norm over every parameter with a
    gradient, in all groups (the gradient of the one scalar loss)."""

    def _step_size(self, group, loss, grad_sq_norm):
        """lr * min((loss - f_star) / (c ||g||^2 + eps), max_lr); 0 when the denominator is 0."""
        denom = group["c"] * grad_sq_norm + group["eps"]
        if denom == 0:
            return torch.zeros((), dtype=grad_sq_norm.dtype)
        gamma = (loss.detach().to(grad_sq_norm.dtype) - group["f_star"]) / denom
        if "max_lr" in group:
            gamma = torch.clamp(gamma, max=group["max_lr"])
        return group["lr"] * gamma

    def _prepare(self, closure, loss):
        loss = _resolve_loss(closure, loss)
        grads = [p.grad for p in _params_with_grad(self)]
        if not grads:
            return loss, None
        dtype = torch.promote_types(grads[0].dtype, torch.float32)
        for g in grads[1:]:
            dtype = torch.promote_types(dtype, g.dtype)
        grad_sq_norm = sum((g.to(dtype) * g.to(dtype)).sum() for g in grads)
        return loss, grad_sq_norm


class SPS(_PolyakBase):
    """SPS (Loizou et al. 2021, eq. 4) with optax.polyak_sgd's eps and a global lr factor:

        gamma = lr (f(x) - f_star) / (c ||grad f(x)||^2 + eps)       (0 when the denominator is 0)
        x <- x - gamma grad f(x)

    ||.|| is over every parameter of every group; with lr = 1, c = 1 this is optax.polyak_sgd's
    step without its max_learning_rate cap."""

    def __init__(self, params, lr=1.0, c=1.0, f_star=0.0, eps=0.0):
        super().__init__(params, dict(lr=lr, c=c, f_star=f_star, eps=eps))

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        loss, grad_sq_norm = self._prepare(closure, loss)
        if grad_sq_norm is None:
            return loss
        for group in self.param_groups:
            gamma = self._step_size(group, loss, grad_sq_norm)
            for p in group["params"]:
                if p.grad is not None:
                    p.sub_(gamma.to(p.dtype) * p.grad)
        return loss


class SPSMax(_PolyakBase):
    """SPS_max (Loizou et al. 2021, eq. 5), the form of optax.polyak_sgd:

        gamma = lr min((f(x) - f_star) / (c ||grad f(x)||^2 + eps), max_lr)
        x <- x - gamma grad f(x)

    With lr = 1, c = 1 it is optax.polyak_sgd(max_learning_rate=max_lr, f_min=f_star, eps=eps)
    except for optax's guard (step 0 when ||g||^2 + eps <= machine epsilon; here when it is 0)."""

    def __init__(self, params, lr=1.0, c=1.0, f_star=0.0, eps=0.0, max_lr=1.0):
        super().__init__(params, dict(lr=lr, c=c, f_star=f_star, eps=eps, max_lr=max_lr))

    step = SPS.step


class SPSMomentum(_PolyakBase):
    """MomSPS_max (Oikonomou & Loizou, "Stochastic Polyak step-sizes and momentum", 2024): heavy
    ball with the SPS_max step scaled by (1 - momentum),

        gamma_t = lr (1 - beta) min((f - f_star) / (c ||g||^2 + eps), max_lr)
        x_{t+1} = x_t - gamma_t g_t + beta (x_t - x_{t-1})        (x_0 = x_1)

    kept as the last displacement: buf <- beta buf + gamma_t g; x <- x - buf (buf = x_{t-1} - x_t
    before the step, 0 initially)."""

    def __init__(self, params, lr=1.0, momentum=0.9, c=1.0, f_star=0.0, eps=0.0, max_lr=10.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, c=c, f_star=f_star, eps=eps, max_lr=max_lr))

    @torch.no_grad()
    def step(self, closure=None, loss=None):
        loss, grad_sq_norm = self._prepare(closure, loss)
        if grad_sq_norm is None:
            return loss
        for group in self.param_groups:
            beta = group["momentum"]
            gamma = (1 - beta) * self._step_size(group, loss, grad_sq_norm)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(beta).add_(gamma.to(p.dtype) * p.grad)
                p.sub_(buf)
        return loss
