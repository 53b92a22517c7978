"""Image augmentation applied to training samples (vla.data.transforms, in the data pipeline)."""

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


def color_jitter(images: Tensor, strength: float, seed: int) -> Tensor:
    """torchvision's ColorJitter on every image of one sample, each with its own draw: brightness, contrast and
    saturation factors in [1 - strength, 1 + strength], hue shifted by up to strength / 4 (at most 0.5).

    images: uint8 [N, H, W, 3] -> same shape. torchvision draws from the global RNG, so the draw runs in a forked RNG
    seeded with `seed`: the same sample key gives the same colours in any worker, and the training process's RNG (the
    diffusion noise) is left as it was.
    """
    if strength <= 0:
        return images
    from torchvision.transforms.v2 import ColorJitter

    jitter = ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(strength / 4, 0.5))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = torch.stack([jitter(image) for image in images.permute(0, 3, 1, 2)])
    return out.permute(0, 2, 3, 1).contiguous()
