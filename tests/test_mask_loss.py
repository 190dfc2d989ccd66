"""The fused focal + dice mask loss equals the textbook formulas, values and gradients."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from sam3_model.errors import TargetError
from sam3_model.mask_loss import binary_focal_dice, upsampled_focal_dice
from sam3_model.targets import ConceptTargets


def _reference(logits, targets, alpha, gamma):
    focal = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none").mean(1)
    prob = logits.sigmoid()
    dice = 1 - (2 * (prob * targets).sum(1) + 1) / (prob.sum(1) + targets.sum(1) + 1)
    return focal, dice


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (0.5, 0.0), (0.3, 1.5)])
def test_fused_loss_equals_reference_values_and_gradients(alpha, gamma):
    generator = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(4, 500, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = (torch.rand(4, 500, generator=generator) > 0.6).double()
    upstream = torch.randn(2, 4, generator=generator, dtype=torch.float64)
    ref_focal, ref_dice = _reference(logits, targets, alpha, gamma)
    (ref_grad,) = torch.autograd.grad((ref_focal * upstream[0] + ref_dice * upstream[1]).sum(), logits)
    focal, dice = binary_focal_dice(logits, targets, alpha, gamma)
    (grad,) = torch.autograd.grad((focal * upstream[0] + dice * upstream[1]).sum(), logits)
    torch.testing.assert_close(focal, ref_focal, atol=1e-12, rtol=0)
    torch.testing.assert_close(dice, ref_dice, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=0)


def test_fused_loss_passes_gradcheck():
    logits = torch.randn(2, 30, dtype=torch.float64, requires_grad=True)
    targets = (torch.rand(2, 30) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x: binary_focal_dice(x, targets), (logits,))


def test_half_precision_logits_compute_in_float32():
    focal, dice = binary_focal_dice(torch.zeros(1, 8, dtype=torch.bfloat16), torch.ones(1, 8))
    assert focal.dtype == dice.dtype == torch.float32
    assert torch.allclose(focal, torch.tensor([0.25 * 0.25 * torch.log(torch.tensor(2.0))]))  # p = 0.5


def test_soft_masks_are_rejected():
    box = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    with pytest.raises(TargetError, match="binary"):
        ConceptTargets([box], [torch.full((1, 4, 4), 0.5)])
    ConceptTargets([box], [torch.ones(1, 4, 4, dtype=torch.bool)])  # bool masks are fine


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_upsampled_loss_equals_upsample_then_loss(chunk):
    generator = torch.Generator().manual_seed(1)
    low = (3 * torch.randn(7, 9, 11, generator=generator, dtype=torch.float64)).requires_grad_()
    targets = torch.rand(7, 30, 40, generator=generator) > 0.6  # bool, at a larger canvas
    upstream = torch.randn(2, 7, generator=generator, dtype=torch.float64)
    up = torch.nn.functional.interpolate(low[:, None], size=(30, 40), mode="bilinear", align_corners=False)
    ref_focal, ref_dice = _reference(up.flatten(1), targets.flatten(1).double(), 0.25, 2.0)
    (ref_grad,) = torch.autograd.grad((ref_focal * upstream[0] + ref_dice * upstream[1]).sum(), low)
    focal, dice = upsampled_focal_dice(low, targets, chunk=chunk)
    (grad,) = torch.autograd.grad((focal * upstream[0] + dice * upstream[1]).sum(), low)
    torch.testing.assert_close(focal, ref_focal, atol=1e-12, rtol=0)
    torch.testing.assert_close(dice, ref_dice, atol=1e-12, rtol=0)
    torch.testing.assert_close(grad, ref_grad, atol=1e-12, rtol=0)


def test_chunked_upsampled_loss_with_no_matches():
    low = torch.zeros(0, 9, 11, requires_grad=True)
    focal, dice = upsampled_focal_dice(low, torch.zeros(0, 30, 40, dtype=torch.bool))
    assert focal.shape == dice.shape == (0,)
    (focal.sum() + dice.sum()).backward()
    assert low.grad.shape == low.shape
