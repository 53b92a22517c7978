"""The streaming frame source (vla.data.frames.LeRobotFrames) against the in-memory loader and LeRobotDataset itself,
in image and video mode: images, chunks and pads at episode ends, history, missing camera slots, resizing, DataLoader
workers, and bad input named by dataset, episode, frame and key."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vla.data.dataset import load_chunked_demos
from vla.data.frames import FrameDecodeError, LeRobotFrames
from vla.data.registry import load_embodiment

REPO, FPS, SIZE, HORIZON = "lab/frames", 10, 32, 6
LENGTHS = (9, 12)  # frames per episode: chunks of HORIZON run past both ends


def level(episode: int, frame: int) -> int:
    """The grey level of a frame: distinct per frame, far apart so a lossy video keeps them apart."""
    return 20 + 100 * episode + 7 * frame


def write_dataset(root: Path, video: bool, nan_at: tuple[int, int] | None = None) -> Path:
    """Episodes of LENGTHS frames, cameras `top` (grey level(e, f)) and `wrist` (255 - that), at SIZE px."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    image = {"dtype": "video" if video else "image", "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channels"]}
    vector = {"dtype": "float32", "shape": (3,), "names": ["x", "y", "z"]}
    dataset = LeRobotDataset.create(
        repo_id=REPO, fps=FPS, root=root, robot_type="toy", use_videos=video,
        features={"observation.images.top": image, "observation.images.wrist": image, "observation.state": vector,
                  "action": vector})
    for episode, length in enumerate(LENGTHS):
        for frame in range(length):
            grey = np.full((SIZE, SIZE, 3), level(episode, frame), np.uint8)
            action = np.array([episode, frame, 0.5], np.float32)
            state = -action
            if (episode, frame) == nan_at:
                action[2] = np.nan
            dataset.add_frame({"observation.images.top": grey, "observation.images.wrist": 255 - grey,
                               "observation.state": state, "action": action, "task": f"task {episode}"})
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def video_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("frames") / "video", video=True)


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("frames") / "image", video=False)


def edge_frames(lengths) -> list[int]:
    """First, last-but-one, last of every episode (chunks padded there) and a middle frame."""
    starts = np.cumsum((0,) + tuple(lengths))
    return sorted({int(i) for s, e in zip(starts[:-1], starts[1:], strict=True) for i in (s, s + 1, e - 2, e - 1)})


def frames_of(root: Path) -> LeRobotFrames:
    return LeRobotFrames(root, REPO, chunk_size=HORIZON, image_size=SIZE, action_kind="joint_position")


def lerobot(root: Path, **options):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(REPO, root=root, video_backend="pyav", **options)


def test_image_mode_equals_the_in_memory_loader_and_lerobot(tiny_demo_config, tiny_demos_path):
    """Real Meta-World demos (image mode): every field equals load_chunked_demos and LeRobotDataset.__getitem__."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    repo, h = tiny_demo_config.repo_id, 8
    frames = LeRobotFrames(tiny_demos_path, repo, chunk_size=h, image_size=tiny_demo_config.image_size)
    demos = load_chunked_demos(str(tiny_demos_path), repo, chunk_size=h)
    fps = frames.info.fps
    reference = LeRobotDataset(repo, root=tiny_demos_path, delta_timestamps={"action": [k / fps for k in range(h)]})
    assert frames.camera_slots == demos.camera_slots and len(frames) == len(demos)
    assert frames.embodiment == demos.embodiment and frames.info == demos.info and frames.tasks == demos.tasks
    np.testing.assert_array_equal(frames.episode_index, demos.episode_index.numpy())
    np.testing.assert_array_equal(frames.numeric()["action"], demos.actions[:, 0].numpy())
    lengths = np.bincount(frames.episode_index)
    for i in edge_frames(lengths):
        item, ref = frames[i], reference[i]
        assert item["images"].shape == (1, 32, 32, 3) and item["image_mask"].tolist() == [True]
        np.testing.assert_array_equal(item["images"], demos.images[i].numpy())
        np.testing.assert_array_equal(item["state"], demos.state[i].numpy())
        np.testing.assert_array_equal(item["actions"], demos.actions[i].numpy())
        np.testing.assert_array_equal(item["actions"], ref["action"].numpy())
        np.testing.assert_array_equal(item["action_is_pad"], ref["action_is_pad"].numpy())
        assert item["instruction"] == ref["task"] and item["episode_index"] == int(ref["episode_index"])
        assert item["frame_index"] == int(ref["frame_index"])
    assert frames[len(frames) - 1]["action_is_pad"].sum() == h - 1


def test_video_mode_equals_lerobot_decoding(video_root):
    frames = frames_of(video_root)
    reference = lerobot(video_root, delta_timestamps={"action": [k / FPS for k in range(HORIZON)]})
    assert frames.camera_slots == ["top", "wrist"] and frames._images is None  # no image column is kept
    for i in edge_frames(LENGTHS):
        item, ref = frames[i], reference[i]
        for s, key in enumerate(("observation.images.top", "observation.images.wrist")):
            theirs = (ref[key].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
            assert np.abs(item["images"][s].astype(int) - theirs).max() <= 1, (i, key)
        grey = level(item["episode_index"], item["frame_index"])
        assert abs(int(item["images"][0].mean()) - grey) <= 3 and abs(int(item["images"][1].mean()) - 255 + grey) <= 3
        np.testing.assert_array_equal(item["actions"], ref["action"].numpy())
        np.testing.assert_array_equal(item["action_is_pad"], ref["action_is_pad"].numpy())
        np.testing.assert_array_equal(item["state"], ref["observation.state"].numpy())


@pytest.mark.parametrize("mode", ["video", "image"])
def test_history_resize_and_missing_slot(mode, video_root, image_root, tmp_path):
    """n_obs_steps 3 through an entry with a missing middle slot, resized to 16 px: time-major, episode start
    repeated, the missing slot zeros and masked."""
    root = video_root if mode == "video" else image_root
    entry = {"name": "toy_arm", "format": "lerobot", "fps": FPS,
             "action": [{"key": "action", "names": ["x", "y", "z"], "kind": "joint_position", "unit": "rad"}],
             "state": [{"key": "observation.state", "names": ["x", "y", "z"], "kind": "joint_position", "unit": "rad"}],
             "cameras": {"primary": "observation.images.top", "secondary": None,
                         "wrist": "observation.images.wrist"}}
    (tmp_path / "toy_arm.yaml").write_text(yaml.safe_dump(entry))
    frames = LeRobotFrames(root, REPO, chunk_size=HORIZON, image_size=16, n_obs_steps=3,
                           camera_slots=["primary", "secondary", "wrist"],
                           entry=load_embodiment(str(tmp_path / "toy_arm.yaml")))
    assert frames.embodiment == "toy_arm" and frames.camera_slots == ["primary", "secondary", "wrist"]
    first_of_second = LENGTHS[0]
    for i, expected_frames in ((first_of_second + 1, (0, 0, 1)), (first_of_second + 5, (3, 4, 5))):
        item = frames[i]
        assert item["images"].shape == (9, 16, 16, 3) and item["images"].dtype == np.uint8
        assert item["image_mask"].tolist() == [True, False, True] * 3
        for t, f in enumerate(expected_frames):
            top, missing, wrist = item["images"][3 * t:3 * t + 3].astype(int)
            assert abs(top.mean() - level(1, f)) <= 3 and abs(wrist.mean() - (255 - level(1, f))) <= 3
            assert not missing.any()


def test_workers_read_a_cheaply_pickled_source(video_root, image_root):
    """Nothing decoded or opened at construction; the pickle carries the numeric columns only; forked workers (after
    the main process has opened a decoder) and shuffled batches give what the source gives."""
    video = frames_of(video_root)
    image = frames_of(image_root)
    assert video._readers is None
    assert len(pickle.dumps(video)) < 20_000 and len(pickle.dumps(image)) < 50_000
    expected = {i: video[i] for i in range(len(video))}  # opens the decoder in this process before forking
    loader = torch.utils.data.DataLoader(video, batch_size=4, shuffle=True, num_workers=2,
                                         generator=torch.Generator().manual_seed(0))
    seen = []
    for batch in loader:
        assert batch["images"].shape[1:] == (2, SIZE, SIZE, 3) and batch["actions"].shape[1:] == (HORIZON, 3)
        for b, frame in enumerate(batch["frame_index"].tolist()):
            i = sum(LENGTHS[:int(batch["episode_index"][b])]) + frame
            assert torch.equal(batch["images"][b], torch.from_numpy(expected[i]["images"]))
            assert torch.equal(batch["actions"][b], torch.from_numpy(expected[i]["actions"]))
            seen.append(i)
    assert sorted(seen) == list(range(len(video)))


def test_bad_input_is_named(video_root, tmp_path):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(video_root, root)
    frames = frames_of(root)
    top = next((root / "videos" / "observation.images.top").rglob("*.mp4"))
    data = bytearray(top.read_bytes())
    data[len(data) // 3:] = bytes(len(data) - len(data) // 3)  # zero the last two thirds
    top.write_bytes(bytes(data))
    with pytest.raises(FrameDecodeError, match=rf"dataset {REPO} at .*damaged: cannot read 'observation.images.top' "
                                               r"of episode 1, frame 10 from video .*file-000.mp4"):
        frames[LENGTHS[0] + 10]
    top.unlink()
    with pytest.raises(FileNotFoundError, match=r"video file .*file-000.mp4 of 'observation.images.top' is missing "
                                                r"\(episodes \[0, 1\]\)"):
        frames_of(root)
    nan_root = write_dataset(tmp_path / "nan", video=False, nan_at=(1, 4))
    with pytest.raises(ValueError, match="action has NaN or inf at episode 1, frame 4"):
        frames_of(nan_root)


def test_video_demos_read_back_like_the_image_demos(tiny_demo_config, tiny_demos_path):
    """vla-demos --video: the first reach episode recorded as mp4 reads back with the image-mode demos' actions and
    (up to compression) images; the image-mode cache key is unchanged by the option."""
    import dataclasses

    from vla.sim.demos import generate_demos

    video_config = dataclasses.replace(tiny_demo_config, tasks=["reach"], episodes_per_task=1, video=True)
    assert "video" not in tiny_demo_config.cache_key() and video_config.cache_key()["video"] is True
    path = generate_demos(video_config)
    assert list(path.rglob("*.mp4")) and path != tiny_demos_path
    video = LeRobotFrames(path, video_config.repo_id, chunk_size=4, image_size=tiny_demo_config.image_size)
    image = LeRobotFrames(tiny_demos_path, tiny_demo_config.repo_id, chunk_size=4,
                          image_size=tiny_demo_config.image_size)
    assert len(video) == int((image.episode_index == 0).sum())
    np.testing.assert_array_equal(video.numeric()["action"], image.numeric()["action"][:len(video)])
    for i in (0, len(video) // 2, len(video) - 1):
        ours, theirs = video[i], image[i]
        np.testing.assert_array_equal(ours["actions"], theirs["actions"])
        np.testing.assert_array_equal(ours["action_is_pad"], theirs["action_is_pad"])
        assert np.abs(ours["images"].astype(float) - theirs["images"]).mean() < 6
