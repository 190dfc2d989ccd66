"""Point-sampled mask loss (PointRend / Mask2Former scheme): the loss on K points instead of every pixel.

Points are drawn uniformly (oversampled), the most uncertain ones (logit nearest 0) are kept, and uniform
random points fill the rest; predictions and targets are read at those points with bilinear `grid_sample`.
This avoids upsampling every predicted mask to the full canvas, which dominates memory at 1008 px.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(maps: Tensor, points: Tensor) -> Tensor:
    """Bilinearly read (N, H, W) maps at (N, K, 2) points in [0, 1] (x, y) -> (N, K)."""
    grid = 2.0 * points.unsqueeze(2) - 1.0  # (N, K, 1, 2) in [-1, 1]
    return F.grid_sample(maps.unsqueeze(1), grid, align_corners=False).squeeze(1).squeeze(-1)


@torch.no_grad()
def uncertain_points(logits: Tensor, num_points: int, oversample_ratio: float = 3.0,
                     importance_ratio: float = 0.75, generator: torch.Generator | None = None) -> Tensor:
    """(N, h, w) mask logits -> (N, num_points, 2) sample points in [0, 1], biased to uncertain regions."""
    n = logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(n, num_candidates, 2, device=logits.device, generator=generator)
    uncertainty = -point_sample(logits.float(), candidates).abs()  # (N, num_candidates)
    num_uncertain = int(importance_ratio * num_points)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    chosen = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    random_points = torch.rand(n, num_points - num_uncertain, 2, device=logits.device, generator=generator)
    return torch.cat([chosen, random_points], dim=1)
