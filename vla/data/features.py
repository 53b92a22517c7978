"""The LeRobot feature spec of the datasets this project writes (scripted demos, recorded episodes)."""

from __future__ import annotations


def lerobot_features(cameras: list[str], image_size: int, state_names: list[str], action_names: list[str]) -> dict:
    """One square uint8 image per camera, the state vector and the action vector, named."""
    features = {f"observation.images.{c}": {"dtype": "image", "shape": (image_size, image_size, 3),
                                             "names": ["height", "width", "channels"]} for c in cameras}
    features["observation.state"] = {"dtype": "float32", "shape": (len(state_names),), "names": list(state_names)}
    features["action"] = {"dtype": "float32", "shape": (len(action_names),), "names": list(action_names)}
    return features
