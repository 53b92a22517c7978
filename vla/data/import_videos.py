"""`vla-data import-videos`: a folder of mp4 videos, one instruction each -> an action-free LeRobot dataset.

    vla-data import-videos --videos_dir clips/ --output_root outputs/datasets/clips --repo_id lab/clips \\
        [--instructions clips/instructions.json] [--camera primary] [--image_size 224] [--video true] [--fps 0]

The instructions file (default `<videos_dir>/instructions.json`) is one JSON object mapping each video's file name to
its instruction:

    {"pick_cup.mp4": "pick up the cup", "open_drawer.mp4": "open the top drawer"}

Every `.mp4` file directly in the folder is one episode (in file-name order) whose task is its instruction. Its frames
are decoded with PyAV (torchcodec does not load here; see vla.data.frames) and written (lerobot 0.4.4
`LeRobotDataset.create`) as the one camera `observation.images.<camera>`, as video (default; LeRobot's AV1 mp4) or,
with `--video=false`, as PNG frames (the in-memory reader `--data.reader=memory` reads only those). There is no
action and no state feature: the dataset is action-free data for latent-action pretraining (vla.latent), read by
both frame sources with `has_actions` False. Frames are resized to `--image_size` x `--image_size` (bicubic, squashed
to a square without cropping, as the frame sources resize) when it is given, else kept at the videos' size, which
must then be the same for every video. The dataset's fps is the videos' frame rate (all must agree, to 0.01 fps),
rounded to an integer as LeRobot stores it, unless `--fps` gives it. `meta/vla_videos.json` records which video
each episode came from.

Every problem is found before anything is written and named with its file: an empty folder, a video without an
instruction, an instruction naming no video of the folder, an unreadable video, frames of another size than the
first video's, another frame rate. A video that fails while it is being written removes the partial dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vla.data.features import lerobot_features

INSTRUCTIONS_FILE = "instructions.json"
SOURCES_FILE = Path("meta") / "vla_videos.json"
# lerobot encodes video with SVT-AV1, which kills the process (SIGFPE) on frames of 24 px or less here; 32 is the
# smallest side tested to encode
MIN_VIDEO_SIDE = 32


@dataclass
class ImportVideosConfig:
    videos_dir: str = ""  # the folder of .mp4 files
    instructions: str = ""  # JSON {file name: instruction}; "" = <videos_dir>/instructions.json
    output_root: str = ""  # the LeRobot dataset's root (must not exist yet)
    repo_id: str = ""
    camera: str = "primary"  # the image key is observation.images.<camera> (match the model's --model.cameras)
    image_size: int = 0  # > 0: resize every frame to image_size x image_size; 0 = keep (every video the same size)
    video: bool = True  # store the frames as video (mp4); false = PNG frames in the parquet files
    fps: int = 0  # 0 = the videos' own frame rate (all must agree)
    robot_type: str = ""  # recorded as the dataset's robot_type (the embodiment name it trains under; "" = unknown)
    image_writer_threads: int = 2  # lerobot's PNG-writing threads (0 = in the main thread)


@dataclass(frozen=True)
class VideoInfo:
    """One source video: its path, instruction, frame size (height, width) and frame rate."""

    path: Path
    instruction: str
    height: int
    width: int
    fps: float


def import_videos(cfg: ImportVideosConfig) -> Path:
    """Write the dataset (see the module docstring) and return its root."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    videos = check_videos(cfg)
    height, width = (cfg.image_size, cfg.image_size) if cfg.image_size > 0 else (videos[0].height, videos[0].width)
    fps = cfg.fps or round(videos[0].fps)
    root = Path(cfg.output_root)
    key = f"observation.images.{cfg.camera}"
    features = lerobot_features([cfg.camera], (height, width), [], [], video=cfg.video)
    dataset = LeRobotDataset.create(repo_id=cfg.repo_id, fps=fps, features=features, root=root,
                                    robot_type=cfg.robot_type or None, use_videos=cfg.video,
                                    image_writer_threads=cfg.image_writer_threads)
    episodes = []
    try:
        for video in tqdm(videos, desc="importing videos", unit="video"):
            frames = 0
            for image in decode_frames(video.path, cfg.image_size):
                if image.shape[:2] != (height, width):
                    raise ValueError(f"{video.path}: frame {frames} is {image.shape[1]}x{image.shape[0]}; the "
                                     f"video's first frame was {width}x{height}")
                dataset.add_frame({key: image, "task": video.instruction})
                frames += 1
            dataset.save_episode()
            episodes.append({"episode_index": len(episodes), "file": video.path.name, "frames": frames,
                             "instruction": video.instruction})
        dataset.finalize()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)  # a partial dataset would load as a shorter one
        raise
    (root / SOURCES_FILE).write_text(json.dumps({"videos_dir": str(cfg.videos_dir),
                                                 "instructions": str(instructions_path(cfg)),
                                                 "episodes": episodes}, indent=1))
    return root


def check_videos(cfg: ImportVideosConfig) -> list[VideoInfo]:
    """Every video of the folder with its instruction, size and rate, after every check that can be made before
    writing (see the module docstring); a ValueError naming the file otherwise."""
    for name in ("videos_dir", "output_root", "repo_id"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    folder, root = Path(cfg.videos_dir), Path(cfg.output_root)
    if not folder.is_dir():
        raise ValueError(f"--videos_dir {folder} is not a folder")
    if root.exists():
        raise ValueError(f"--output_root {root} already exists; choose a new folder")
    if cfg.image_size < 0 or cfg.fps < 0:
        raise ValueError(f"--image_size and --fps must be >= 0; got {cfg.image_size}, {cfg.fps}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mp4")
    if not paths:
        raise ValueError(f"{folder} holds no .mp4 video")
    instructions = read_instructions(instructions_path(cfg))
    unlisted = [p.name for p in paths if p.name not in instructions]
    if unlisted:
        raise ValueError(f"{instructions_path(cfg)} gives no instruction for video(s) {unlisted}: add "
                         f"\"<file name>\": \"<instruction>\" for each")
    missing = sorted(set(instructions) - {p.name for p in paths})
    if missing:
        raise ValueError(f"{instructions_path(cfg)} names video(s) {missing}, which are not .mp4 files in {folder}")
    videos = [probe_video(p, instructions[p.name]) for p in paths]
    check_alike(videos, cfg)
    return videos


def instructions_path(cfg: ImportVideosConfig) -> Path:
    return Path(cfg.instructions) if cfg.instructions else Path(cfg.videos_dir) / INSTRUCTIONS_FILE


def read_instructions(path: Path) -> dict[str, str]:
    """{file name: instruction} from a JSON object; a ValueError naming the file for anything else."""
    if not path.is_file():
        raise ValueError(f"no instructions file {path}: write a JSON object {{\"<file name>.mp4\": \"<instruction>\"}} "
                         f"(or pass --instructions)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must hold one JSON object {{file name: instruction}}; got a {type(raw).__name__}")
    bad = {name: text for name, text in raw.items() if not isinstance(text, str) or not text.strip()}
    if bad:
        raise ValueError(f"{path}: the instructions of {sorted(bad)} are not non-empty strings: {bad}")
    return {name: text.strip() for name, text in raw.items()}


def probe_video(path: Path, instruction: str) -> VideoInfo:
    """The frame size and rate of a video, from its first decoded frame; a ValueError naming the file when it has no
    video stream, no frame or cannot be decoded."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            stream = container.streams.video[0]
            first = next(container.decode(stream), None)
            if first is None:
                raise ValueError("it has no frame")
            rate = stream.average_rate or stream.guessed_rate
            if not rate:
                raise ValueError("it does not say its frame rate")
            return VideoInfo(path, instruction, first.height, first.width, float(rate))
    except Exception as error:  # noqa: BLE001  (FFmpeg raises many types; all mean the file is not a readable video)
        raise ValueError(f"{path}: cannot read it as a video: {type(error).__name__}: {error}") from error


def check_alike(videos: list[VideoInfo], cfg: ImportVideosConfig) -> None:
    """One dataset has one frame size (unless --image_size resizes every frame) and one frame rate (unless --fps
    gives it); video mode needs sides of at least MIN_VIDEO_SIDE."""
    first = videos[0]
    for video in videos[1:]:
        if cfg.image_size == 0 and (video.height, video.width) != (first.height, first.width):
            raise ValueError(f"{video.path}: frames are {video.width}x{video.height}; {first.path.name}'s are "
                             f"{first.width}x{first.height}: pass --image_size to resize every frame to one size")
        if cfg.fps == 0 and abs(video.fps - first.fps) > 0.01:
            raise ValueError(f"{video.path}: {video.fps:g} fps; {first.path.name} has {first.fps:g} fps: one dataset "
                             f"has one rate (pass --fps to set it, or convert the videos to one rate)")
    side = cfg.image_size or min(first.height, first.width)
    if cfg.video and side < MIN_VIDEO_SIDE:
        raise ValueError(f"frames of {side} px are too small for lerobot's video encoder (SVT-AV1 crashes below "
                         f"{MIN_VIDEO_SIDE} px here): pass --image_size >= {MIN_VIDEO_SIDE} or --video=false")


def decode_frames(path: Path, size: int = 0):
    """Yield every frame of a video as uint8 [H, W, 3] RGB (resized to size x size, bicubic, when size > 0); a
    ValueError naming the file and frame when decoding fails."""
    import av

    index = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for frame in container.decode(stream):
                options = {"width": size, "height": size, "interpolation": "BICUBIC"} if size > 0 else {}
                yield np.ascontiguousarray(frame.to_ndarray(format="rgb24", **options))
                index += 1
    except av.error.FFmpegError as error:
        raise ValueError(f"{path}: cannot decode frame {index}: {type(error).__name__}: {error}") from error
    if index == 0:
        raise ValueError(f"{path}: no frame could be decoded")

