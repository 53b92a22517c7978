"""The LeRobot feature spec of the datasets this project writes (scripted demos, recorded episodes)."""

from __future__ import annotations


def lerobot_features(cameras: list[str], image_size: int, state_names: list[str], action_names: list[str],
                     video: bool = False) -> dict:
    """One square uint8 image per camera (stored as PNG frames, or with `video` as an mp4 per camera), the state
    vector and the action vector, named."""
    image = {"dtype": "video" if video else "image", "shape": (image_size, image_size, 3),
             "names": ["height", "width", "channels"]}
    features = {f"observation.images.{c}": dict(image) for c in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)}
    features["action"] = {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)}
    return features
