"""Cross-embodiment mixtures (vla.data.mixture, vla.data.transforms): the sampler's determinism, resumption, rank
shards and weights; image-slot masks; one policy trained through vla-train's config on a batch mixing a 4-D
Meta-World arm (one camera) and a 6-D SO-101 (two cameras)."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_registry_data import so101_dataset, write_entry  # noqa: F401 (fixture)

from vla.config import MixtureEntry, parse
from vla.data.mixture import BLOCK, MixtureSampler, make_loader
from vla.data.transforms import normalize_batch
from vla.policy import VLAPolicy
from vla.training.train import TrainRunConfig, build_policy, load_sources, train
from vla.types import Observation


def keys(sampler: MixtureSampler, n: int, start: int = 0) -> list[tuple[int, int, int]]:
    return list(itertools.islice(sampler.keys(start), n))


def test_sampler_is_a_function_of_seed_rank_and_position():
    a, b = MixtureSampler([50, 30], [2.0, 1.0], 8, seed=7), MixtureSampler([50, 30], [2.0, 1.0], 8, seed=7)
    assert keys(a, 300) == keys(b, 300)
    assert keys(a, 300) != keys(MixtureSampler([50, 30], [2.0, 1.0], 8, seed=8), 300)
    # resuming mid-epoch (and across a block of choices) gives the keys the uninterrupted stream gives there
    whole = keys(a, BLOCK + 100)
    assert keys(b, 150, start=BLOCK - 50) == whole[BLOCK - 50: BLOCK + 100]
    batches = itertools.islice(iter(MixtureSampler([50, 30], [2.0, 1.0], 8, seed=7, start=16)), 2)
    assert [k for batch in batches for k in batch] == whole[16:32]


def test_sampler_follows_weights_and_covers_each_epoch():
    sampler = MixtureSampler([40, 10], [3.0, 1.0], 4, seed=0)
    drawn = keys(sampler, 4000)
    share = Counter(source for source, _, _ in drawn)[0] / len(drawn)
    assert abs(share - 0.75) < 0.03
    # the first 10 draws of source 1 are one epoch: every frame once
    first_epoch = [frame for source, frame, _ in drawn if source == 1][:10]
    assert sorted(first_epoch) == list(range(10))
    assert all(source == 0 for source, _, _ in keys(MixtureSampler([40, 10], [1.0, 0.0], 4, seed=0), 500))


def test_ranks_draw_disjoint_shards_of_each_epoch():
    shards = [[frame for source, frame, _ in keys(MixtureSampler([30], [1.0], 4, seed=3, rank=r, world_size=3), 10)]
              for r in range(3)]
    assert sorted(itertools.chain(*shards)) == list(range(30))


def test_sampler_errors_name_the_problem():
    with pytest.raises(ValueError, match="one weight per dataset"):
        MixtureSampler([10, 10], [1.0], 4, seed=0)
    with pytest.raises(ValueError, match="positive sum"):
        MixtureSampler([10], [0.0], 4, seed=0)
    with pytest.raises(ValueError, match="fewer frames than the 4 ranks"):
        MixtureSampler([3], [1.0], 4, seed=0, world_size=4)


@pytest.fixture(scope="module")
def mixture_config(tiny_run_config, tiny_demos_path, tiny_demo_config, so101_dataset, tmp_path_factory):  # noqa: F811
    """vla-train's config for Meta-World (metaworld_sawyer: primary = corner, wrist missing) + SO-101 (primary = top,
    wrist = wrist), written as YAML and parsed as `vla-train --config_path` does."""
    folder = tmp_path_factory.mktemp("mixture")
    model = dataclasses.replace(tiny_run_config.model, cameras=["primary", "wrist"], max_action_dim=8, max_state_dim=8)
    data = dataclasses.replace(tiny_run_config.data, mixture=[
        MixtureEntry(repo_id=tiny_demo_config.repo_id, root=str(tiny_demos_path), embodiment_config="metaworld_sawyer",
                     weight=1.0),
        MixtureEntry(repo_id="lab/so101_cubes", root=str(so101_dataset), embodiment_config=write_entry(folder),
                     weight=1.0)])
    cfg = dataclasses.replace(tiny_run_config, model=model, data=data,
                              train=dataclasses.replace(tiny_run_config.train, steps=6, batch_size=8, save_every=6,
                                                        output_dir=str(folder / "run")))
    path = folder / "mixture.yaml"
    from vla.config import to_yaml

    path.write_text(to_yaml(cfg))
    assert yaml.safe_load(path.read_text())["data"]["mixture"][1]["repo_id"] == "lab/so101_cubes"
    return parse(TrainRunConfig, [f"--config_path={path}"])


def test_a_batch_mixes_embodiments_of_different_widths(mixture_config):
    sources = load_sources(mixture_config.model, mixture_config.data)
    assert [s.embodiment for s in sources] == ["metaworld_sawyer", "my_so101"]
    assert sources[0].camera_keys == ["observation.images.corner", None]  # the Sawyer has no wrist camera
    policy = build_policy(mixture_config, sources, None)
    batch = next(iter(make_loader(sources, [1.0, 1.0], policy.normalizer, batch_size=32, seed=0, image_shift=2)))
    is_sawyer = torch.tensor([e == "metaworld_sawyer" for e in batch["embodiment"]])
    assert 0 < int(is_sawyer.sum()) < 32
    assert batch["actions"].shape == (32, 4, 8) and batch["state"].shape == (32, 8)
    assert batch["action_mask"][is_sawyer].sum(1).eq(4).all() and batch["action_mask"][~is_sawyer].sum(1).eq(6).all()
    assert (batch["actions"][is_sawyer][..., 4:] == 0).all() and (batch["state"][is_sawyer][:, 7:] == 0).all()
    assert batch["image_mask"][is_sawyer].tolist() == [[True, False]] * int(is_sawyer.sum())
    assert batch["image_mask"][~is_sawyer].all() and (batch["images"][is_sawyer][:, 1] == 0).all()
    losses = []
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for step in range(40):
        torch.manual_seed(step)
        loss = policy(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5])


def test_masked_image_slots_do_not_change_the_prediction(tiny_run_config):
    model = dataclasses.replace(tiny_run_config.model, cameras=["corner", "wrist"])
    from vla.data import Normalizer

    stats = {"action": {k: [0.0] * 4 for k in ("mean", "min", "q01")} | {k: [1.0] * 4 for k in ("std", "max", "q99")},
             "state": {k: [0.0] * 7 for k in ("mean", "min", "q01")} | {k: [1.0] * 7 for k in ("std", "max", "q99")}}
    policy = VLAPolicy(model, Normalizer({"arm": stats}, "quantile", 4, 7)).eval()
    images = torch.randint(0, 256, (2, 2, 32, 32, 3), dtype=torch.uint8)
    other = images.clone()
    other[:, 1] = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    mask = torch.tensor([[True, False], [True, False]])

    def features(pictures, image_mask):  # the cognition feature every head reads (an untrained head ignores it)
        with torch.no_grad():
            return policy.condition(pictures, torch.zeros(2, 7), ["reach"] * 2, ["arm"] * 2, image_mask).backbone

    masked, masked_other = features(images, mask), features(other, mask)
    assert torch.equal(masked.cognition, masked_other.cognition)  # what a missing camera's slot holds is ignored
    assert not masked.token_mask.all() and torch.equal(masked.token_mask, masked_other.token_mask)
    assert not torch.allclose(features(images, None).cognition, features(other, None).cognition)
    with pytest.raises(ValueError, match="masks every image slot"):
        features(images, torch.zeros(2, 2, dtype=torch.bool))
    chunk = policy.predict(Observation(images, torch.zeros(2, 7), ["reach"] * 2, ["arm"] * 2, mask), num_steps=2)
    assert chunk.actions.shape == (2, 4, 4)


def test_vla_train_trains_one_policy_on_the_mixture(mixture_config):
    final = train(mixture_config)
    policy = VLAPolicy.from_pretrained(final)
    assert policy.embodiments == ["metaworld_sawyer", "my_so101"]
    sources = load_sources(mixture_config.model, mixture_config.data)
    for demos, width in zip(sources, (4, 6), strict=True):
        idx = torch.tensor([0, 3])
        obs = Observation(demos.observation_images(idx), demos.state[idx], demos.instructions(idx),
                          [demos.embodiment] * 2, demos.observation_mask(2))
        chunk = policy.predict(obs, num_steps=2)
        assert chunk.actions.shape == (2, 4, width) and chunk.mask.all()
    meta = (final / "meta.json").read_text()
    assert '"weight": 1.0' in meta and "my_so101" in meta
    raw = sources[1].sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(normalize_batch(policy.normalizer, raw)["action_mask"].sum(1), torch.full((4,), 6))


@pytest.mark.slow
def test_mixture_run_trains_one_policy_and_evaluates_every_robot(tmp_path):
    """`vla-eval mixture` on its smoke recipe: Meta-World + robosuite UR5e + robosuite Panda demos (the Panda's written
    as RLDS and read back) -> one policy -> each robot closed loop, with the report and its provenance."""
    from vla.config import parse_with_recipe
    from vla.eval.mixture_benchmark import MixtureRunConfig, run_mixture

    cfg = parse_with_recipe(MixtureRunConfig, "configs/bench/mixture_smoke.yaml",
                            [f"--results_dir={tmp_path / 'results'}", f"--train.output_dir={tmp_path / 'train'}",
                             f"--tiny_backbone.root={tmp_path / 'vlm'}"])
    cfg = dataclasses.replace(cfg, datasets=[
        dataclasses.replace(d, demos=dataclasses.replace(d.demos, root=str(tmp_path / "data"))) for d in cfg.datasets])
    summary = run_mixture(cfg)
    robots = ["metaworld_sawyer", "robosuite_ur5e_joint", "robosuite_panda_osc"]
    assert list(summary["embodiments"]) == robots
    for block in summary["embodiments"].values():
        assert all(r["episodes"] == 1 for r in block["tasks"].values())
    assert [d["embodiment"] for d in summary["training"]["datasets"]] == robots
    panda = summary["embodiments"]["robosuite_panda_osc"]
    assert panda["through_rlds"] and panda["source"]["root"].endswith("-rlds/lerobot")
    rlds = Path(panda["source"]["root"]).parent / "rlds" / "robosuite_panda_osc_rlds" / "0.1.0"
    assert (rlds / "features.json").exists()
    report = (tmp_path / "results" / "mixture.md").read_text()
    assert "| robosuite_ur5e_joint | robosuite/Lift/UR5e | " in report
    for name in ("mixture.png", "summary.json", *(f"rollouts_{robot}.mp4" for robot in robots)):
        assert (tmp_path / "results" / name).exists(), name
    assert summary["provenance"]["config"]["model"]["cameras"] == ["primary", "wrist"]


def test_stream_reader_gives_the_memory_readers_batches(mixture_config):
    """data.reader=stream (frames decoded per sample in a DataLoader worker) yields exactly the batches the in-memory
    reader yields: same keys, same frames, same augmentation, same normalisation."""
    memory = load_sources(mixture_config.model, mixture_config.data)
    stream = load_sources(mixture_config.model, dataclasses.replace(mixture_config.data, reader="stream"))
    assert [type(s).__name__ for s in stream] == ["LeRobotFrames", "LeRobotFrames"]
    normalizer = build_policy(mixture_config, memory, None).normalizer
    batches = [iter(make_loader(sources, [1.0, 2.0], normalizer, batch_size=8, seed=3, image_shift=2, start=5,
                                num_workers=workers)) for sources, workers in ((memory, 0), (stream, 1))]
    for _ in range(2):
        a, b = next(batches[0]), next(batches[1])
        assert a.keys() == b.keys() and a["embodiment"] == b["embodiment"]
        for key in ("images", "image_mask", "state", "actions", "action_mask", "action_is_pad"):
            assert torch.equal(a[key], b[key]), key
