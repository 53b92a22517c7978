"""Action-free data (video without action labels) through the data pipeline: both frame sources, normalisation,
mixtures, latent-action labels, the training entry's refusal for heads that need actions, `vla-data import-videos`
and `vla-demos --action_free`."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vla.data.dataset import load_chunked_demos
from vla.data.frames import LeRobotFrames
from vla.data.import_videos import ImportVideosConfig, decode_frames, import_videos
from vla.data.mixture import make_loader
from vla.data.normalize import Normalizer
from vla.data.transforms import as_tensors, normalize_sample
from vla.latent.labels import LatentLabels, write_labels

REPO, SIZE, HORIZON, CAMERA = "lab/clips", 32, 4, "corner"  # the tiny demos' camera and size, so they mix
LENGTHS = {"a_push.mp4": 5, "b_reach.mp4": 7, "c_press.mp4": 6}
INSTRUCTIONS = {"a_push.mp4": "push the block", "b_reach.mp4": "reach the goal", "c_press.mp4": "press the button"}


def write_mp4(path: Path, frames: int, height: int = 48, width: int = 64, fps: int = 10, base: int = 20) -> None:
    """A small mpeg4 video whose frame t is grey level base + 25 t (far apart, so lossy codecs keep them apart)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            image = np.full((height, width, 3), base + 25 * t, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_clips(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name, frames in LENGTHS.items():
        write_mp4(folder / name, frames)
    (folder / "instructions.json").write_text(json.dumps(INSTRUCTIONS))
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips") / "videos")


@pytest.fixture(scope="module")
def imported(clips, tmp_path_factory) -> Path:
    """The clips as an image-mode action-free dataset at SIZE px, camera CAMERA."""
    return import_videos(ImportVideosConfig(videos_dir=str(clips), output_root=str(tmp_path_factory.mktemp("i") / "d"),
                                            repo_id=REPO, camera=CAMERA, image_size=SIZE, video=False))


@pytest.fixture(scope="module")
def action_free_demos(tiny_demo_config):
    """vla-demos --action_free: the tiny demos' first reach episode, renders and instructions only."""
    from vla.sim.demos import generate_demos

    config = dataclasses.replace(tiny_demo_config, tasks=["reach"], episodes_per_task=1, action_free=True)
    return config, generate_demos(config)


def readers(root: Path, repo_id: str, **options):
    return (load_chunked_demos(str(root), repo_id, chunk_size=HORIZON, image_size=SIZE, **options),
            LeRobotFrames(root, repo_id, chunk_size=HORIZON, image_size=SIZE, **options))


def assert_same_sample(a: dict, b: dict) -> None:
    b = as_tensors(b)
    assert a.keys() == b.keys()
    for key, value in a.items():
        if torch.is_tensor(value):
            assert value.dtype == b[key].dtype and torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


@pytest.mark.parametrize("which", ["imported", "demos"])
def test_both_readers_load_action_free_data_alike(which, imported, action_free_demos):
    root, repo_id = (imported, REPO) if which == "imported" else (action_free_demos[1], action_free_demos[0].repo_id)
    memory, stream = readers(root, repo_id)
    assert not memory.has_actions and not stream.has_actions
    assert memory.info == stream.info and memory.info.action_names == [] and memory.info.action_kind == ""
    for source in (memory, stream):
        numeric = source.numeric()
        assert numeric["action"].shape == (len(source), 0) and numeric["state"].shape == (len(source), 0)
        chunks, pads = source.chunks()
        assert chunks.shape == (len(source), HORIZON, 0) and bool(pads.all())
    for i in range(len(memory)):
        assert_same_sample(memory[i], stream[i])
    sample = memory[len(memory) // 2]
    assert sample["actions"].shape == (HORIZON, 0) and sample["actions"].dtype == torch.float32
    assert bool(sample["action_is_pad"].all()) and sample["state"].shape == (0,)
    assert sample["state"].dtype == torch.float32


def test_imported_videos_round_trip(clips, imported, tmp_path):
    stream = LeRobotFrames(imported, REPO, chunk_size=HORIZON, image_size=SIZE)
    assert stream.tasks == [INSTRUCTIONS[name] for name in sorted(LENGTHS)]
    assert np.bincount(stream.episode_index).tolist() == [LENGTHS[name] for name in sorted(LENGTHS)]
    source = json.loads((imported / "meta" / "vla_videos.json").read_text())
    assert [e["file"] for e in source["episodes"]] == sorted(LENGTHS)
    features = json.loads((imported / "meta" / "info.json").read_text())["features"]
    assert "action" not in features and "observation.state" not in features
    assert features[f"observation.images.{CAMERA}"]["dtype"] == "image"
    # image mode keeps the frames PyAV decodes, resized as the readers resize
    expected = np.stack([f for name in sorted(LENGTHS) for f in decode_frames(clips / name, SIZE)])
    got = np.stack([stream[i]["images"][0] for i in range(len(stream))])
    np.testing.assert_array_equal(got, expected)
    assert [stream[i]["instruction"] for i in (0, 5, 12)] == [INSTRUCTIONS[n] for n in sorted(LENGTHS)]

    # video mode at the videos' own size (64 x 48), through the vla-data dispatcher; the memory reader refuses video
    from vla.data.report import main

    root = tmp_path / "video"
    main(["import-videos", f"--videos_dir={clips}", f"--output_root={root}", f"--repo_id={REPO}", "--camera=top"])
    features = json.loads((root / "meta" / "info.json").read_text())["features"]
    assert features["observation.images.top"]["dtype"] == "video"
    assert features["observation.images.top"]["shape"] == [48, 64, 3]
    video = LeRobotFrames(root, REPO, chunk_size=HORIZON, image_size=SIZE)
    assert len(video) == len(stream) and not video.has_actions
    levels = np.array([video[i]["images"].mean() for i in range(len(video))])
    np.testing.assert_allclose(levels, got.reshape(len(got), -1).mean(1), atol=6)  # AV1 is lossy
    with pytest.raises(ValueError, match=r"as video.*--data.reader=stream"):
        load_chunked_demos(str(root), REPO, chunk_size=HORIZON, image_size=SIZE)


def bad_inputs():
    def empty(folder: Path) -> str:
        for path in folder.glob("*.mp4"):
            path.unlink()
        return re.escape(f"{folder} holds no .mp4 video")

    def unlisted(folder: Path) -> str:
        write_mp4(folder / "extra.mp4", 3)
        return r"gives no instruction for video\(s\) \['extra.mp4'\]"

    def missing(folder: Path) -> str:
        (folder / "b_reach.mp4").unlink()
        return r"names video\(s\) \['b_reach.mp4'\], which are not \.mp4 files"

    def other_size(folder: Path) -> str:
        write_mp4(folder / "c_press.mp4", 4, height=40)
        return r"c_press.mp4: frames are 64x40; a_push.mp4's are 64x48: pass --image_size"

    def unreadable(folder: Path) -> str:
        (folder / "b_reach.mp4").write_bytes(b"not a video" * 100)
        return r"b_reach.mp4: cannot read it as a video"

    return {"empty folder": empty, "video without instruction": unlisted, "instruction without video": missing,
            "frames of another size": other_size, "unreadable video": unreadable}


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_import_videos_names_bad_input(case, clips, tmp_path):
    folder = tmp_path / "videos"
    shutil.copytree(clips, folder)
    message = bad_inputs()[case](folder)
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        import_videos(ImportVideosConfig(videos_dir=str(folder), output_root=str(output), repo_id=REPO))
    assert not output.exists()  # found before anything was written
    if case == "frames of another size":  # resizing every frame makes them one size
        import_videos(ImportVideosConfig(videos_dir=str(folder), output_root=str(output), repo_id=REPO,
                                         image_size=SIZE, video=False))


def test_action_free_demos_have_no_action_column(tiny_demo_config, tiny_demos_path, action_free_demos):
    from vla.sim.demos import generate_demos

    config, path = action_free_demos
    features = json.loads((path / "meta" / "info.json").read_text())["features"]
    assert "action" not in features and "observation.state" not in features
    assert f"observation.images.{config.camera}" in features
    assert not (path / "meta" / "vla_embodiment.json").exists()  # no actions: no action kind
    assert config.cache_key()["action_free"] is True and "action_free" not in tiny_demo_config.cache_key()
    assert generate_demos(config) == path  # cached like the others
    # the same expert episode as the labelled demos' first reach episode, its renders only
    free = LeRobotFrames(path, config.repo_id, chunk_size=HORIZON, image_size=SIZE)
    labelled = load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, chunk_size=HORIZON)
    first = np.flatnonzero(labelled.episode_index.numpy() == 0)
    assert len(free) == len(first) and free.embodiment == labelled.embodiment
    for i in (0, len(free) - 1):
        np.testing.assert_array_equal(free[i]["images"], labelled[int(first[i])]["images"].numpy())
        assert free[i]["instruction"] == labelled[int(first[i])]["instruction"]


def test_action_free_samples_normalise_without_statistics(imported, action_free_demos, tiny_demos_path,
                                                          tiny_demo_config):
    free = load_chunked_demos(str(imported), REPO, chunk_size=HORIZON, image_size=SIZE)
    labelled = load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, chunk_size=HORIZON)
    same_robot = LeRobotFrames(action_free_demos[1], action_free_demos[0].repo_id, chunk_size=HORIZON,
                               image_size=SIZE)
    assert Normalizer.from_sources([free], "quantile", 6, 40).stats == {}  # only action-free data: no entry
    normalizer = Normalizer.from_sources([labelled, same_robot, free], "quantile", 6, 40)
    assert normalizer.stats == Normalizer.from_sources([labelled], "quantile", 6, 40).stats
    for raw in (free[3], as_tensors(same_robot[3])):
        sample = normalize_sample(normalizer, raw)
        assert torch.equal(sample["actions"], torch.zeros(HORIZON, 6))
        assert not bool(sample["action_mask"].any()) and sample["action_mask"].shape == (6,)
        assert bool(sample["action_is_pad"].all()) and torch.equal(sample["state"], torch.zeros(40))
    with pytest.raises(ValueError, match="has no actions"):
        Normalizer.from_demos(free)


def test_mixture_draws_action_free_and_labelled_samples(imported, tiny_demos_path, tiny_demo_config):
    labelled = load_chunked_demos(str(tiny_demos_path), tiny_demo_config.repo_id, chunk_size=HORIZON)
    free = LeRobotFrames(imported, REPO, chunk_size=HORIZON, image_size=SIZE)
    normalizer = Normalizer.from_sources([labelled, free], "quantile", 6, 40)
    batches = iter(make_loader([labelled, free], [1.0, 1.0], normalizer, batch_size=8, seed=0, image_shift=2))
    masks, embodiments = [], []
    for _ in range(3):
        batch = next(batches)
        assert batch["actions"].shape == (8, HORIZON, 6) and batch["state"].shape == (8, 40)
        assert batch["images"].shape == (8, 1, SIZE, SIZE, 3)
        masks.append(batch["action_mask"])
        embodiments += batch["embodiment"]
        free_rows = ~batch["action_mask"].any(1)
        assert not bool(batch["actions"][free_rows].any()) and bool(batch["action_is_pad"][free_rows].all())
    has_actions = torch.cat(masks).any(1)
    assert has_actions.any() and (~has_actions).any()  # batches of both
    assert [e == "unknown" for e in embodiments] == (~has_actions).tolist()


def labelled_copy(imported: Path, folder: Path, seed: int = 0, fingerprint: str = "a" * 64) -> tuple[Path, np.ndarray]:
    """A copy of the imported dataset with random latent-action labels (K = 3 tokens of 16 codes per frame)."""
    shutil.copytree(imported, folder)
    frames = sum(LENGTHS.values())
    codes = np.random.default_rng(seed).integers(0, 16, size=(frames, 3))
    write_labels(folder, LatentLabels(codes, lam="outputs/lam", lam_fingerprint=fingerprint, codebook_size=16,
                                      frame_gap=2))
    return folder, codes


def test_latent_codes_follow_the_labels_file(imported, tmp_path):
    from vla.training.train import dataset_fingerprint

    root, codes = labelled_copy(imported, tmp_path / "labelled")
    memory, stream = readers(root, REPO, latent_labels=True)
    row = {(int(e), int(f)): i for i, (e, f) in enumerate(zip(memory.episode_index, memory.frame_index, strict=True))}
    for source in (memory, stream):
        np.testing.assert_array_equal(source.latent_labels.codes, codes)
        normalizer = Normalizer.from_sources([source], "quantile", 6, 40)
        batch = next(iter(make_loader([source], [1.0], normalizer, batch_size=6, seed=1)))
        assert batch["latent_codes"].dtype == torch.int64 and batch["latent_codes"].shape == (6, 3)
        rows = [row[(e, f)] for e, f in zip(batch["episode_index"], batch["frame_index"], strict=True)]
        np.testing.assert_array_equal(batch["latent_codes"].numpy(), codes[rows])
    for i in range(len(memory)):
        assert_same_sample(memory[i], stream[i])
    assert memory.sample(4, torch.Generator().manual_seed(0))["latent_codes"].shape == (4, 3)
    unlabelled = LeRobotFrames(root, REPO, chunk_size=HORIZON, image_size=SIZE)
    assert "latent_codes" not in unlabelled[0]
    assert dataset_fingerprint(stream) != dataset_fingerprint(unlabelled)  # a relabelled dataset is other data


def test_missing_labels_name_the_command(imported):
    for read in (lambda: load_chunked_demos(str(imported), REPO, chunk_size=HORIZON, latent_labels=True),
                 lambda: LeRobotFrames(imported, REPO, chunk_size=HORIZON, image_size=SIZE, latent_labels=True)):
        with pytest.raises(FileNotFoundError, match="vla-latent label"):
            read()


@pytest.fixture
def latent_model(tiny_run_config):
    """The tiny run's model with a latent head sized for `labelled_copy`'s labels (K = 3 tokens of 16 codes)."""
    from vla.action_heads.latent import LatentHeadConfig

    head = LatentHeadConfig(horizon=tiny_run_config.model.head.horizon, codebook_size=16, latent_tokens=3,
                            decoder_width=32, decoder_depth=1, decoder_heads=2)
    return dataclasses.replace(tiny_run_config.model, head=head)


def mixture_config(tiny_run_config, *entries, reader: str = "memory"):
    from vla.config import MixtureEntry

    mixture = [MixtureEntry(repo_id=repo_id, root=str(root)) for repo_id, root in entries]
    return dataclasses.replace(tiny_run_config.data, mixture=mixture, reader=reader)


def test_latent_training_reads_labels_of_one_model(latent_model, tiny_run_config, imported, tmp_path):
    from vla.training.train import load_sources, training_summary

    first, codes = labelled_copy(imported, tmp_path / "first")
    second, _ = labelled_copy(imported, tmp_path / "second", seed=1)
    data = mixture_config(tiny_run_config, (REPO, first), (REPO, second), reader="stream")
    sources = load_sources(latent_model, data)
    np.testing.assert_array_equal(sources[0].latent_labels.codes, codes)
    assert sources[1][0]["latent_codes"].shape == (3,)
    cfg = dataclasses.replace(tiny_run_config, data=data)
    summary = training_summary(cfg, sources, {"run": {"num_processes": 1, "distributed": {}, "dataset": ""}})
    assert summary["datasets"][0]["action_free"] is True
    assert summary["datasets"][0]["latent_labels"]["lam_fingerprint"] == "a" * 64

    other, _ = labelled_copy(imported, tmp_path / "other", fingerprint="b" * 64)
    with pytest.raises(ValueError, match="different latent action models"):
        load_sources(latent_model, mixture_config(tiny_run_config, (REPO, first), (REPO, other)))


def test_a_head_that_needs_actions_refuses_action_free_data_before_training(tiny_run_config, tiny_demos_path,
                                                                             tiny_demo_config, imported, tmp_path):
    from vla.training.train import train

    data = mixture_config(tiny_run_config, (tiny_demo_config.repo_id, tiny_demos_path), (REPO, imported))
    out = tmp_path / "run"
    cfg = dataclasses.replace(tiny_run_config, data=data,
                              train=dataclasses.replace(tiny_run_config.train, output_dir=str(out)))
    with pytest.raises(ValueError, match=rf"dataset {REPO} at .* has no actions.*the dit head learns from actions "
                                         r"only.*--model.head.type=latent"):
        train(cfg)
    assert not out.exists()


def test_an_action_free_registry_entry_maps_the_cameras(imported, tmp_path):
    entry = tmp_path / "clips.yaml"
    entry.write_text(yaml.safe_dump({"name": "clips", "format": "lerobot", "fps": 10, "action": [],
                                     "cameras": {"primary": f"observation.images.{CAMERA}", "wrist": None}}))
    from vla.data.registry import load_embodiment

    loaded = load_embodiment(str(entry))
    assert not loaded.has_actions and loaded.info().action_kind == ""
    memory, stream = readers(imported, REPO, entry=loaded, camera_slots=["primary", "wrist"])
    assert stream.camera_slots == ["primary", "wrist"] and stream.embodiment == "clips"
    assert_same_sample(memory[2], stream[2])
    assert stream[2]["image_mask"].tolist() == [True, False]
    with pytest.raises(ValueError, match="has no actions.*action_kind='ee_delta'"):
        LeRobotFrames(imported, REPO, chunk_size=HORIZON, image_size=SIZE, action_kind="ee_delta")


def test_data_report_of_action_free_data(imported, tmp_path):
    from vla.data.report import DatasetReportConfig, write_report

    path = write_report(DatasetReportConfig(root=str(imported), repo_id=REPO, output_dir=str(tmp_path)))
    text = path.read_text()
    assert "action-free (no actions)" in text and "idle frames" not in text and "Action dimensions" not in text
    report = json.loads((tmp_path / "dataset_report.json").read_text())
    assert report["dataset"]["action_free"] and report["frames"] == sum(LENGTHS.values())
