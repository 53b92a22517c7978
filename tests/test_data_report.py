"""`vla-data report`: a dataset's episodes, per-dimension statistics, idle frames, NaN frames, frame grid and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vla.data.dataset import load_chunked_demos
from vla.data.registry import load_embodiment
from vla.data.report import Columns, DatasetReportConfig, idle_frames, main, motion_dims, write_report

SIZE, FPS = 32, 10


def columns(action: list[list[float]], episodes: list[int]) -> Columns:
    n = len(action)
    return Columns(action=np.array(action, dtype=np.float32), state=np.zeros((n, 1), np.float32),
                   episode_index=np.array(episodes), frame_index=np.zeros(n, np.int64), index=np.arange(n),
                   task_index=np.zeros(n, np.int64))


def test_idle_frames_by_dimension_kind():
    """A displacement dimension idles at ~0; an absolute one when it stops changing (never on an episode's first
    frame, which has nothing to compare with)."""
    delta = columns([[0.5], [0.0], [0.001], [-0.5], [0.0]], [0, 0, 0, 1, 1])
    assert idle_frames(delta, np.array([True]), threshold=0.01).tolist() == [False, True, True, False, True]
    absolute = columns([[1.0], [1.0], [2.0], [2.0], [2.0]], [0, 0, 0, 1, 1])
    assert idle_frames(absolute, np.array([False]), threshold=0.01).tolist() == [False, True, False, False, True]
    mixed = columns([[0.0, 1.0], [0.0, 1.0], [0.0, 0.0]], [0, 0, 0])  # the gripper closing is not idle
    assert idle_frames(mixed, np.array([True, False]), threshold=0.01).tolist() == [False, True, False]


def test_motion_dims_come_from_the_entry_or_the_recorded_kind():
    sawyer = load_embodiment("metaworld_sawyer")
    assert motion_dims(sawyer, sawyer.action_names, "ee_delta").tolist() == [True, True, True, False]
    assert motion_dims(None, ["dx", "dy", "gripper"], "ee_delta").tolist() == [True, True, False]
    assert motion_dims(None, ["j1", "j2"], "joint_position").tolist() == [False, False]


def test_report_of_the_demos(tiny_demo_config, tiny_demos_path, tmp_path, capsys):
    out = tmp_path / "report"
    main(["report", f"--root={tiny_demos_path}", f"--repo_id={tiny_demo_config.repo_id}",
          "--embodiment_config=metaworld_sawyer", f"--output_dir={out}", "--noop_frames=true"])
    report = json.loads((out / "dataset_report.json").read_text())
    assert report["episodes"] == 4 and report["dataset"]["fps"] == 80.0
    assert set(report["tasks"].values()) == {2} and len(report["tasks"]) == 2
    assert list(report["action"]) == ["dx", "dy", "dz", "gripper"]
    actions = load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, chunk_size=1).actions[:, 0]
    for d, stats in enumerate(report["action"].values()):  # the training loader's frames, read another way
        assert stats["min"] <= stats["q01"] <= stats["mean"] <= stats["q99"] <= stats["max"] and stats["std"] >= 0
        assert stats["min"] == pytest.approx(float(actions[:, d].min()))
        assert stats["max"] == pytest.approx(float(actions[:, d].max()))
        assert stats["mean"] == pytest.approx(float(actions[:, d].mean()), rel=1e-5)
    assert sum(e["length"] for e in report["per_episode"]) == report["frames"]
    assert report["non_finite"]["frames"] == 0
    assert report["provenance"]["config"]["repo_id"] == tiny_demo_config.repo_id
    noops = json.loads((out / "noop_frames.json").read_text())["indices"]
    assert len(noops) == report["idle"]["frames"]
    text = (out / "dataset_report.md").read_text()
    assert "| dx |" in text and "4 episodes" in text and "primary: `observation.images.corner`" in text
    assert (out / "frames.png").stat().st_size > 5_000 and (out / "actions.png").stat().st_size > 10_000
    assert "wrote" in capsys.readouterr().out


@pytest.fixture(scope="module")
def video_dataset_with_nan(tmp_path_factory):
    """2 episodes x 8 frames, video mode, written with lerobot's own API; the action of episode 1, frame 3 is NaN
    and episode 0 stands still (zero actions) from frame 4 on."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    root = tmp_path_factory.mktemp("video") / "data"
    vector = {"dtype": "float32", "shape": (3,), "names": ["dx", "dy", "gripper"]}
    dataset = LeRobotDataset.create(
        repo_id="lab/video", fps=FPS, root=root, robot_type="toy", use_videos=True,
        features={"observation.images.top": {"dtype": "video", "shape": (SIZE, SIZE, 3),
                                             "names": ["height", "width", "channels"]},
                  "observation.state": vector, "action": vector})
    rng = np.random.default_rng(0)
    for episode in range(2):
        for frame in range(8):
            action = rng.uniform(-1, 1, 3).astype(np.float32)
            if episode == 0 and frame >= 4:
                action[:] = 0.0
            if episode == 1 and frame == 3:
                action[0] = np.nan
            dataset.add_frame({"observation.images.top": np.full((SIZE, SIZE, 3), 30 * frame, np.uint8),
                               "observation.state": np.zeros(3, np.float32), "action": action, "task": "move"})
        dataset.save_episode()
    dataset.finalize()
    return root


def test_report_of_a_video_dataset_names_non_finite_frames_and_idle_episodes(video_dataset_with_nan, tmp_path):
    cfg = DatasetReportConfig(root=str(video_dataset_with_nan), repo_id="lab/video", output_dir=str(tmp_path),
                              video_backend="pyav")
    from vla.data import embodiment

    embodiment.write_action_kind(video_dataset_with_nan, "ee_delta")
    text = write_report(cfg).read_text()
    report = json.loads((tmp_path / "dataset_report.json").read_text())
    assert report["dataset"]["video"] is True
    assert report["non_finite"] == {"frames": 1, "first": [{"key": "action", "episode": 1, "frame": 3}]}
    assert "episode 1 frame 3 (`action`)" in text
    idle = {e["episode"]: e["idle_share"] for e in report["per_episode"]}
    # frames 5-7: at frame 4 the (absolute) gripper still moved, from its last random value to 0
    assert idle[0] == pytest.approx(3 / 8) and idle[1] == 0.0  # the NaN frame is not idle
    assert (tmp_path / "frames.png").stat().st_size > 3_000


def test_bad_input_is_named(tiny_demo_config, tiny_demos_path, tmp_path):
    with pytest.raises(ValueError, match="--repo_id is required"):
        write_report(DatasetReportConfig(root=str(tiny_demos_path), output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="--idle_threshold must be >= 0"):
        write_report(DatasetReportConfig(root=str(tiny_demos_path), repo_id=tiny_demo_config.repo_id,
                                         idle_threshold=-1.0, output_dir=str(tmp_path)))
    with pytest.raises(SystemExit, match="usage: vla-data report"):
        main(["summary"])
