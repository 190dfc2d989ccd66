"""Sigmoid focal and dice losses of mask logits against binary masks, fused into one autograd function.

For binary targets y, with z = x (2y - 1) and q = sigmoid(-z) (= 1 - p_t):
    focal = alpha_t * softplus(-z) * q^gamma        (the RetinaNet focal loss, exactly)
    p = y + (1 - 2y) q,  so  sum p = sum y - 2 sum(y q) + sum q  and  sum p y = sum y - sum(y q)
so both losses need q, softplus(-z) and three sums. The backward is written out, so autograd keeps only the
logits and targets instead of a dozen full-resolution intermediates: at 1008 x 1008 per matched instance this
is most of the objective's time and memory (see docs/benchmarks.md).
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


class _BinaryFocalDice(torch.autograd.Function):
    """(M, N) logits, (M, N) binary targets -> (M,) mean focal loss and (M,) dice loss per instance."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, alpha: float, gamma: float) -> tuple[Tensor, Tensor]:
        _, q, softplus, alpha_t = _terms(logits, targets, alpha)
        focal = _rowdot(softplus.mul_(alpha_t), _pow(q, gamma)) / logits.shape[1]
        sum_y, sum_q, sum_yq = targets.sum(1), q.sum(1), _rowdot(targets, q)
        numerator = 2 * (sum_y - sum_yq) + 1
        denominator = 2 * (sum_y - sum_yq) + sum_q + 1  # sum p + sum y + 1
        ctx.save_for_backward(logits, targets, numerator, denominator)
        ctx.alpha, ctx.gamma = alpha, gamma
        return focal, 1 - numerator / denominator

    @staticmethod
    def backward(ctx, grad_focal: Tensor, grad_dice: Tensor) -> tuple[Tensor, None, None, None]:
        logits, targets, numerator, denominator = ctx.saved_tensors
        alpha, gamma = ctx.alpha, ctx.gamma
        sign, q, softplus, alpha_t = _terms(logits, targets, alpha)
        q_gamma = _pow(q, gamma)
        one_minus_q = 1 - q
        # d focal / dz = -q^(gamma+1) - gamma softplus(-z) q^gamma (1 - q);  dz/dx = sign
        dfocal = softplus.mul_(one_minus_q).mul_(gamma).add_(q).mul_(q_gamma).neg_()
        grad = dfocal.mul_(alpha_t).mul_(sign).mul_((grad_focal / logits.shape[1]).unsqueeze(1))
        # d dice / dp_j = (numerator - 2 y_j denominator) / denominator^2;  dp/dx = q (1 - q)
        scale = (grad_dice / denominator.pow(2)).unsqueeze(1)  # (M, 1)
        ddice = targets.mul(-2 * denominator.unsqueeze(1)).add_(numerator.unsqueeze(1))
        return grad.add_(ddice.mul_(scale).mul_(q).mul_(one_minus_q)), None, None, None


def binary_focal_dice(logits: Tensor, targets: Tensor, alpha: float = 0.25,
                      gamma: float = 2.0) -> tuple[Tensor, Tensor]:
    """Per-instance mean sigmoid focal loss and dice loss: (M, N) logits, (M, N) {0,1} targets -> (M,), (M,)."""
    dtype = torch.promote_types(logits.dtype, torch.float32)  # half precision computes in fp32, fp64 stays
    return _BinaryFocalDice.apply(logits.to(dtype), targets.to(dtype), alpha, gamma)
