"""Sigmoid focal and dice losses of mask logits against binary masks, fused into one autograd function.

For binary targets y, with z = x (2y - 1) and q = sigmoid(-z) (= 1 - p_t):
    focal = alpha_t * softplus(-z) * q^gamma        (the RetinaNet focal loss, exactly)
    p = y + (1 - 2y) q,  so  sum p = sum y - 2 sum(y q) + sum q  and  sum p y = sum y - sum(y q)
so both losses need q, softplus(-z) and three sums. The backward is written out, so autograd keeps only the
logits and targets instead of a dozen full-resolution intermediates.

`upsampled_focal_dice` also fuses the bilinear upsampling of low-resolution mask logits to the target size:
matched masks are processed a few at a time and only the low-resolution logits are kept for the backward,
which upsamples each chunk again. Peak memory is then a few canvases, not several per matched mask; at
1008 x 1008 the dense mask loss was most of the objective's time and memory (see docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise dot product without a temporary: (M, N), (M, N) -> (M,)."""
    return torch.einsum("mn,mn->m", a, b)


def _terms(logits: Tensor, targets: Tensor, alpha: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sign = 2y - 1, q = sigmoid(-z), softplus(-z) and alpha_t, each (M, N)."""
    sign = targets.mul(2).sub_(1)
    neg_z = logits.mul(sign).neg_()
    alpha_t = targets.mul(2 * alpha - 1).add_(1 - alpha)
    return sign, torch.sigmoid(neg_z), F.softplus(neg_z), alpha_t


def _pow(q: Tensor, gamma: float) -> Tensor:
    return q * q if gamma == 2 else q.pow(gamma)


def _focal_dice_sums(logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> tuple[Tensor, ...]:
    """Per row: focal loss sum, dice numerator and dice denominator of (M, N) logits against binary targets."""
    _, q, softplus, alpha_t = _terms(logits, targets, alpha)
    focal_sum = _rowdot(softplus.mul_(alpha_t), _pow(q, gamma))
    sum_y, sum_q, sum_yq = targets.sum(1), q.sum(1), _rowdot(targets, q)
    numerator = 2 * (sum_y - sum_yq) + 1  # 2 sum p y + 1
    denominator = 2 * (sum_y - sum_yq) + sum_q + 1  # sum p + sum y + 1
    return focal_sum, numerator, denominator


def _focal_dice_grad(logits: Tensor, targets: Tensor, numerator: Tensor, denominator: Tensor, alpha: float,
                     gamma: float, grad_focal: Tensor, grad_dice: Tensor) -> Tensor:
    """(M, N) gradient w.r.t. the logits of sum_m grad_focal[m] focal[m] + grad_dice[m] dice[m]."""
    sign, q, softplus, alpha_t = _terms(logits, targets, alpha)
    q_gamma = _pow(q, gamma)
    one_minus_q = 1 - q
    # d focal / dz = -q^(gamma+1) - gamma softplus(-z) q^gamma (1 - q);  dz/dx = sign
    dfocal = softplus.mul_(one_minus_q).mul_(gamma).add_(q).mul_(q_gamma).neg_()
    grad = dfocal.mul_(alpha_t).mul_(sign).mul_((grad_focal / logits.shape[1]).unsqueeze(1))
    # d dice / dp_j = (numerator - 2 y_j denominator) / denominator^2;  dp/dx = q (1 - q)
    scale = (grad_dice / denominator.pow(2)).unsqueeze(1)  # (M, 1)
    ddice = targets.mul(-2 * denominator.unsqueeze(1)).add_(numerator.unsqueeze(1))
    return grad.add_(ddice.mul_(scale).mul_(q).mul_(one_minus_q))


class _BinaryFocalDice(torch.autograd.Function):
    """(M, N) logits, (M, N) binary targets -> (M,) mean focal loss and (M,) dice loss per instance."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
        focal_sum, numerator, denominator = _focal_dice_sums(logits, targets, alpha, gamma)
        ctx.save_for_backward(logits, targets, numerator, denominator)
        ctx.alpha, ctx.gamma = alpha, gamma
        return focal_sum / logits.shape[1], 1 - numerator / denominator

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor) -> tuple[Tensor, None, None, None]:
        grad = _focal_dice_grad(*ctx.saved_tensors, ctx.alpha, ctx.gamma, grad_focal, grad_dice)
        return grad, None, None, None


def binary_focal_dice(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                      gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Per-instance mean sigmoid focal loss and dice loss: (M, N) logits, (M, N) {0,1} targets -> (M,), (M,)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision computes in fp32, fp64 stays
    return _BinaryFocalDice.apply(logits.to(dtype), targets.to(dtype), alpha, gamma)


def _upsample(low: Tensor, size_hw: tuple[int, int]) -> Tensor:
    """(m, h, w) logits -> (m, H*W), bilinear, align_corners=False (as the official mask loss)."""
    return F.interpolate(low.unsqueeze(1), size=size_hw, mode="bilinear", align_corners=False).flatten(1)


class _UpsampledFocalDice(torch.autograd.Function):
    """(M, h, w) low-res logits, (M, H, W) binary targets -> (M,) focal mean and (M,) dice at (H, W)."""

    @staticmethod
    def forward(ctx, low: Tensor, targets: Tensor, alpha: float, gamma: float, chunk: int) -> tuple[Tensor, Tensor]:
        size_hw = tuple(targets.shape[-2:])
        parts = [_focal_dice_sums(_upsample(low[i : i + chunk], size_hw), targets[i : i + chunk].flatten(1).to(low),
                                  alpha, gamma) for i in range(0, len(low), chunk)]
        focal_sum, numerator, denominator = (torch.cat(t) for t in zip(*parts)) if parts else (low.new_zeros(0),) * 3
        ctx.save_for_backward(low, targets, numerator, denominator)
        ctx.alpha, ctx.gamma, ctx.chunk = alpha, gamma, chunk
        return focal_sum / (size_hw[0] * size_hw[1]), 1 - numerator / denominator

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor) -> tuple[Tensor, None, None, None, None]:
        low, targets, numerator, denominator = ctx.saved_tensors
        size_hw = tuple(targets.shape[-2:])
        grad_low = torch.zeros_like(low)
        for i in range(0, len(low), ctx.chunk):
            rows = slice(i, i + ctx.chunk)
            with torch.enable_grad():
                low_chunk = low[rows].detach().requires_grad_()
                up = _upsample(low_chunk, size_hw)  # recomputed: cheaper than keeping M canvases alive
            grad_up = _focal_dice_grad(up.detach(), targets[rows].flatten(1).to(low), numerator[rows],
                                       denominator[rows], ctx.alpha, ctx.gamma, grad_focal[rows], grad_dice[rows])
            (grad_low[rows],) = torch.autograd.grad(up, low_chunk, grad_up)
        return grad_low, None, None, None, None


def upsampled_focal_dice(low_logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0,
                         chunk: int = 4) -> tuple[Tensor, Tensor]:
    """Focal (mean over pixels) and dice of (M, h, w) mask logits upsampled to (M, H, W) binary targets -> (M,), (M,).

    Equal to `binary_focal_dice(interpolate(low_logits), targets)`, computed `chunk` masks at a time.
    """
    dtype = torch.promote_types(low_logits.dtype, torch.float32)
    return _UpsampledFocalDice.apply(low_logits.to(dtype), targets, alpha, gamma, chunk)

