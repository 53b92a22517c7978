"""Image augmentation applied to training batches."""

import torch
import torch.nn.functional as F
from torch import Tensor


def random_shift(images: Tensor, pad: int, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image by up to `pad` pixels with edge replication (DrQ, Kostrikov et al. 2020).

    images: uint8 [B, N, H, W, 3] -> same shape; every camera of a sample gets its own shift.
    """
    if pad <= 0:
        return images
    b, n, h, w, c = images.shape
    flat = images.reshape(b * n, h, w, c).permute(0, 3, 1, 2).float()  # (B*N, 3, H, W)
    padded = F.pad(flat, (pad, pad, pad, pad), mode="replicate")
    dx, dy = torch.randint(0, 2 * pad + 1, (2, b * n), generator=generator).tolist()
    out = torch.stack([padded[i, :, y : y + h, x : x + w] for i, (x, y) in enumerate(zip(dx, dy, strict=True))])
    return out.permute(0, 2, 3, 1).reshape(b, n, h, w, c).to(torch.uint8)
