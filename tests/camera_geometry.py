"""Where a camera should see a point, to test that rendered pictures are upright and not mirrored (test_sim,
test_robosuite)."""

from __future__ import annotations

import numpy as np


def pinhole_projection(position: np.ndarray, axes: np.ndarray, fovy_deg: float, xyz, size: int,
                       upright: bool = True) -> np.ndarray:
    """Pixel (u, v) [2] at which a square pinhole camera at a MuJoCo camera's pose (`position` [3], `axes` [3, 3]
    = cam_xmat) sees `xyz`. upright=True: held upright, looking the same way: world up (+z) points up in the picture;
    for a camera looking straight down, the table's far side (+y) does. upright=False: the camera's own frame
    (its +x right, +y up), as for a wrist camera, whose roll turns with the hand."""
    forward = -axes[:, 2]  # a MuJoCo camera looks along its -z axis
    if upright:
        world_up = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        right = np.cross(forward, world_up)
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
    else:
        right, up = axes[:, 0], axes[:, 1]
    relative = np.asarray(xyz) - position
    focal = 0.5 * size / np.tan(np.deg2rad(fovy_deg) / 2)
    depth = relative @ forward
    return np.array([size / 2 + focal * (relative @ right) / depth, size / 2 - focal * (relative @ up) / depth])


def assert_seen_where_projected(seen: np.ndarray, expected: np.ndarray, size: int, camera: str) -> None:
    """Pixels `seen` [N, 2] match `expected` [N, 2] within 5% of the picture, and clearly not an upside-down,
    mirrored or vertically flipped version of them."""
    upright_error = np.median(np.linalg.norm(seen - expected, axis=1))
    flipped = {"upside down": np.stack([size - expected[:, 0], size - expected[:, 1]], 1),
               "mirrored": np.stack([size - expected[:, 0], expected[:, 1]], 1),
               "vertically flipped": np.stack([expected[:, 0], size - expected[:, 1]], 1)}
    assert upright_error < 0.05 * size, f"{camera!r}: object {upright_error:.1f} px off the upright view"
    for name, other in flipped.items():
        assert np.median(np.linalg.norm(seen - other, axis=1)) > 2 * upright_error + 3, f"{camera!r} looks {name}"
