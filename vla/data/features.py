"""The LeRobot feature spec of the datasets this project writes (scripted demos, recorded episodes)."""

from __future__ import annotations


def lerobot_features(cameras: list[str], image_size: int | tuple[int, int], state_names: list[str],
                     action_names: list[str], video: bool = False) -> dict:
    """One uint8 image per camera, image_size x image_size or (height, width) (stored as PNG frames, or with `video`
    as an mp4 per camera), the state vector and the action vector, named. No state / action names: no such feature
    (action-free data: video without action labels, vla.data.dataset)."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    image = {"dtype": "video" if video else "image", "shape": (height, width, 3),
             "names": ["height", "width", "channels"]}
    features = {f"observation.images.{c}": dict(image) for c in cameras}
    for key, names in (("observation.state", state_names), ("action", action_names)):
        if names:
            features[key] = {"dtype": "float32", "shape": (len(names),), "names": list(names)}
    return features
