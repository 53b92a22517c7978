"""The latent head (UniVLA): latent-action tokens from the backbone's LLM, one action decoder per embodiment.

The conftest's tiny random PaliGemma; normalised batches built here mixing two embodiments of different action widths
("sim": 4-D actions, 7-D state; "wide": 6-D actions, 5-D state) with action-free rows ("video"), each row with random
latent codes (as a latent action model's labels).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_ar_head import INSTRUCTIONS
from test_tokenizers import smooth_chunks

from vla.action_heads import LatentHeadConfig
from vla.backbones import BackboneConfig
from vla.checkpoint import TOKENIZER_DIR, load_policy
from vla.config import LoraConfig, ModelConfig
from vla.data.dataset import ChunkedDemos
from vla.data.normalize import Normalizer
from vla.kv_cache import buffer_reuse
from vla.latent.labels import LatentLabels, write_labels
from vla.policy import VLAPolicy
from vla.training.finetune import check_latent_model, freeze, init_from_checkpoint
from vla.training.lora import add_lora
from vla.training.train import check_latent_labels, load_demos, train, with_embodiment_parts
from vla.types import Observation

H, C, K = 4, 8, 3  # horizon, codebook size, latent tokens per observation
D_MAX, S_MAX = 6, 7
ACTION_DIMS = {"sim": 4, "wide": 6, "other": 4}  # "other": statistics but no decoder
STATE_DIMS = {"sim": 7, "wide": 5, "other": 7}
ROWS = ["sim", "sim", "wide", "wide", "video", "video"]  # "video": action-free rows, no decoder, no statistics
B = len(ROWS)


def identity_normalizer() -> Normalizer:
    """Quantile statistics with q01 = -1 and q99 = 1 in every dim: robot units are the normalised units."""
    def stats(dim):
        return {"mean": [0.0] * dim, "std": [1.0] * dim, "min": [-1.0] * dim, "max": [1.0] * dim,
                "q01": [-1.0] * dim, "q99": [1.0] * dim}
    return Normalizer({name: {"action": stats(ACTION_DIMS[name]), "state": stats(STATE_DIMS[name])}
                       for name in ACTION_DIMS}, "quantile", D_MAX, S_MAX)


def model_config(vlm_path, **head) -> ModelConfig:
    head = {"codebook_size": C, "latent_tokens": K, "decoders": ["sim", "wide"], "decoder_width": 32,
            "decoder_depth": 1, "decoder_heads": 2} | head
    return ModelConfig(backbone=BackboneConfig("paligemma", pretrained=str(vlm_path)),
                       head=LatentHeadConfig(horizon=H, **head), max_action_dim=D_MAX, max_state_dim=S_MAX,
                       image_size=32, cameras=["corner"])


def latent_policy(vlm_path, seed: int = 0, **head) -> VLAPolicy:
    torch.manual_seed(seed)
    return VLAPolicy(model_config(vlm_path, **head), identity_normalizer())


def fixed_batch(seed: int = 0, rows: list[str] = ROWS) -> dict:
    """A normalised batch (as the data pipeline makes it): actions [B, H, D_MAX] zero-padded with action_mask, the
    action-free rows with no action dims; states zero-padded; latent_codes [B, K]."""
    g = torch.Generator().manual_seed(seed)
    n = len(rows)
    actions, mask = torch.zeros(n, H, D_MAX), torch.zeros(n, D_MAX, dtype=torch.bool)
    state = torch.zeros(n, S_MAX)
    for i, name in enumerate(rows):
        if name in ACTION_DIMS:
            dim = ACTION_DIMS[name]
            actions[i, :, :dim] = torch.tensor(smooth_chunks(1, H, dim, seed=seed * 100 + i)[0], dtype=torch.float32)
            mask[i, :dim] = True
            state[i, :STATE_DIMS[name]] = torch.rand(STATE_DIMS[name], generator=g) * 2 - 1
    return {"images": torch.randint(0, 256, (n, 1, 32, 32, 3), generator=g, dtype=torch.uint8),
            "image_mask": torch.ones(n, 1, dtype=torch.bool), "state": state, "actions": actions,
            "action_mask": mask, "action_is_pad": torch.zeros(n, H, dtype=torch.bool),
            "instruction": [INSTRUCTIONS[i % 2] for i in range(n)], "embodiment": list(rows),
            "latent_codes": torch.randint(0, C, (n, K), generator=g)}


def observation(batch: dict, rows: slice = slice(0, 4)) -> Observation:
    """The batch's rows with actions as an observation (robot units = normalised units)."""
    return Observation(batch["images"][rows], batch["state"][rows], batch["instruction"][rows],
                       batch["embodiment"][rows])


def condition(policy: VLAPolicy, batch: dict):
    return policy.encode(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])


def train_on(policy: VLAPolicy, batch: dict, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """AdamW (no weight decay: a parameter with a zero gradient stays put) on one fixed batch; every step's losses
    (total and per term)."""
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    history = []
    for _ in range(steps):
        out = policy(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({name: float(value.detach()) for name, value in out.items()})
    return history


def mean(history: list[dict[str, float]], key: str, rows: slice) -> float:
    values = [row[key] for row in history[rows]]
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def trained(tiny_vlm_path):
    """(policy trained 40 steps on `fixed_batch()`, its loss history), trained once per module."""
    policy = latent_policy(tiny_vlm_path)
    history = train_on(policy, fixed_batch(), steps=40)
    return policy.eval(), history


# ---- configuration ---------------------------------------------------------------------------------------------


def test_config_errors_name_the_problem_and_the_head_has_no_tokenizer(tiny_vlm_path):
    with pytest.raises(ValueError, match="head.codebook_size must be >= 1"):
        LatentHeadConfig(codebook_size=0)
    with pytest.raises(ValueError, match="decoder_width=30 must be divisible by head.decoder_heads=4"):
        LatentHeadConfig(decoder_width=30)
    with pytest.raises(ValueError, match="distinct embodiment names without dots"):
        LatentHeadConfig(decoders=["so100.v2"])
    with pytest.raises(ValueError, match="distinct embodiment names"):
        LatentHeadConfig(decoders=["a", "a"])
    config = LatentHeadConfig()
    assert config.tokenizer_config is None and config.reads_latent_codes and config.uses_vocabulary
    assert (config.codebook_size, config.latent_tokens, config.use_proprio) == (16, 4, False)
    assert config.with_embodiment_parts(["b", "a"]).with_embodiment_parts(["a"]).decoders == ["a", "b"]
    policy = latent_policy(tiny_vlm_path)
    head = policy.head
    text_vocab = policy.backbone.text_vocab_size
    assert head.action_ids.tolist() == list(range(text_vocab, text_vocab + C))  # C new vocabulary slots
    assert sorted(head.decoders) == ["sim", "wide"] and head.state_proj is None
    assert head.action_tokenizer is None


def test_latent_labels_must_match_the_head_and_decoders_follow_the_datasets_with_actions():
    labels = LatentLabels(np.zeros((10, 2), dtype=np.int64), "lam-dir", "f" * 64, codebook_size=32, frame_gap=5)
    model = ModelConfig(head=LatentHeadConfig(codebook_size=C, latent_tokens=K))
    spec = SimpleNamespace(repo_id="lab/videos", root="/data/videos")
    with pytest.raises(ValueError, match=r"lab/videos .* 2 latent tokens per frame from a codebook of 32 .* "
                                         r"--model.head.latent_tokens 2 --model.head.codebook_size 32"):
        check_latent_labels(model, [spec], [SimpleNamespace(latent_labels=labels)])
    matching = dataclasses.replace(model, head=LatentHeadConfig(codebook_size=32, latent_tokens=2))
    check_latent_labels(matching, [spec], [SimpleNamespace(latent_labels=labels)])
    check_latent_labels(model, [spec], [SimpleNamespace()])  # a source without labels: nothing to check here
    sources = [SimpleNamespace(embodiment="wide", has_actions=True), SimpleNamespace(embodiment="ego4d",
                                                                                     has_actions=False),
               SimpleNamespace(embodiment="sim")]  # a source without the flag has actions
    assert with_embodiment_parts(model, sources).head.decoders == ["sim", "wide"]
    explicit = dataclasses.replace(model, head=LatentHeadConfig(decoders=["ur5"]))
    assert with_embodiment_parts(explicit, sources).head.decoders == ["sim", "ur5", "wide"]
    dit = ModelConfig()
    assert with_embodiment_parts(dit, sources) == dit


# ---- training --------------------------------------------------------------------------------------------------


def test_loss_falls_on_fixed_batch_in_both_terms(trained):
    policy, history = trained
    first, last = history[0], slice(-5, None)
    assert first["latent_loss"] == pytest.approx(np.log(C), rel=0.1)  # new tokens start alike: about uniform
    assert mean(history, "latent_loss", last) < 0.3 * first["latent_loss"]
    assert mean(history, "action_loss", last) < 0.5 * mean(history, "action_loss", slice(0, 5))
    assert history[-1]["token_accuracy"] > 0.9
    for row in history:
        assert row["loss"] == pytest.approx(row["latent_loss"] + row["action_loss"], rel=1e-5)


def test_action_free_rows_add_only_cross_entropy(tiny_vlm_path):
    policy = latent_policy(tiny_vlm_path)
    batch = fixed_batch()
    garbage = dict(batch, actions=batch["actions"].clone())
    garbage["actions"][4:] = 5.0  # the action-free rows' actions may be anything (action_mask all False)
    with torch.no_grad():
        clean, dirty = policy(batch), policy(garbage)
        acting = policy({k: v[:4] for k, v in batch.items()})  # the rows with actions alone
        free = policy({k: v[4:] for k, v in batch.items()})  # the action-free rows alone
    assert torch.equal(clean["loss"], dirty["loss"])
    torch.testing.assert_close(clean["action_loss"], acting["action_loss"])  # a mean over the same entries
    assert float(free["action_loss"]) == 0.0 and torch.equal(free["loss"], free["latent_loss"])
    torch.testing.assert_close(clean["latent_loss"], (4 * acting["latent_loss"] + 2 * free["latent_loss"]) / 6)
    # an action-free batch trains the LLM's latent tokens and no decoder (each still gets a zero gradient, for DDP)
    policy({k: v[4:] for k, v in batch.items()})["loss"].backward()
    for name, param in policy.head.decoders.named_parameters():
        assert param.grad is not None and not param.grad.any(), name
    assert policy.backbone.lm_head.weight.grad[policy.head.action_ids].abs().sum() > 0


def test_missing_or_malformed_latent_codes_and_actions_without_a_decoder_are_refused(tiny_vlm_path):
    policy = latent_policy(tiny_vlm_path)
    batch = fixed_batch()
    with pytest.raises(ValueError, match=r"batch field\(s\) \['latent_codes'\].*vla-latent label"):
        policy({k: v for k, v in batch.items() if k != "latent_codes"})
    with pytest.raises(ValueError, match=r"latent_codes must be integers \[B, K\] = \[6, 3\]"):
        policy(dict(batch, latent_codes=batch["latent_codes"][:, :2]))
    with pytest.raises(ValueError, match=r"must lie in 0..7 \(head.codebook_size=8\)"):
        policy(dict(batch, latent_codes=batch["latent_codes"] + C))
    other = fixed_batch(rows=["sim", "other"])
    with pytest.raises(ValueError, match=r"\['other'\] have actions, but the latent head has action decoders only "
                                         r"for \['sim', 'wide'\]"):
        policy(other)


# ---- decoding and the decoders ---------------------------------------------------------------------------------


def test_kv_cached_decoding_equals_full_recompute(trained):
    """Greedy decoding of the latent codes over the persistent cache gives exactly the codes (and chunks) of
    recomputing the suffix at every step, and teacher forcing the codes in one pass predicts them again."""
    policy, _ = trained
    head = policy.head
    batch = fixed_batch(seed=5)  # other observations than the training batch
    with torch.no_grad():
        cond = condition(policy, {k: v[:4] for k, v in batch.items()})
        cached, cached_probs = head.decode_ids(cond)
        full, full_probs = head.decode_ids(cond, kv_cache=False)
        with buffer_reuse(False):  # keys concatenated at every token instead of written into one buffer
            copied, _ = head.decode_ids(cond)
            chunks_copied = head.sample(cond)
        assert cached.shape == (4, K) and torch.equal(cached, full) and torch.equal(cached, copied)
        torch.testing.assert_close(cached_probs, full_probs)
        assert torch.equal(head.logits(cond, cached).argmax(-1), cached)
        chunks = head.sample(cond)
        torch.testing.assert_close(head.sample(cond, kv_cache=False), chunks, rtol=0, atol=1e-6)
        torch.testing.assert_close(chunks_copied, chunks, rtol=0, atol=1e-6)
    train_codes = fixed_batch()["latent_codes"][:4]
    with torch.no_grad():  # on the training observations the trained LLM writes their labels
        seen = head.decode_codes(condition(policy, {k: v[:4] for k, v in fixed_batch().items()}))
    assert (seen == train_codes).float().mean() > 0.9 and len(set(seen.flatten().tolist())) > 2


def test_each_embodiment_has_its_own_decoder_and_action_width(trained):
    policy, _ = trained
    head, batch = policy.head, fixed_batch()
    obs = observation(batch)  # sim, sim, wide, wide: states zero-padded to the widest (7)
    chunk = policy.predict(obs)
    assert chunk.actions.shape == (4, H, D_MAX)
    assert chunk.mask[:2, :4].all() and not chunk.mask[:2, 4:].any() and chunk.mask[2:].all()
    sim = policy.predict(observation(batch, slice(0, 2)))
    wide = Observation(batch["images"][2:4], batch["state"][2:4, :5], batch["instruction"][2:4], ["wide"] * 2)
    assert sim.actions.shape == (2, H, 4) and policy.predict(wide).actions.shape == (2, H, 6)
    torch.testing.assert_close(sim.actions, chunk.actions[:2, :, :4])
    # trained on the batch: each embodiment's decoder reproduces its own actions, from the decoded latent codes
    scale = batch["actions"][:4].abs().sum() / batch["action_mask"][:4].sum() / H  # mean |action| (~0.2)
    assert (chunk.actions[:2, :, :4] - batch["actions"][:2, :, :4]).abs().mean() < 0.4 * scale
    assert (chunk.actions[2:] - batch["actions"][2:4]).abs().mean() < 0.4 * scale
    # the same latent tokens and observation through the other embodiment's decoder give another chunk
    with torch.no_grad():
        cond = condition(policy, {k: v[:2] for k, v in batch.items()})
        latent = head.hidden_states(cond, head.decode_codes(cond))[:, 1:]
        as_sim = head.decode_chunks(cond, latent)
        cond.embodiment = ["wide", "wide"]
        as_wide = head.decode_chunks(cond, latent)
    assert as_sim.shape == as_wide.shape == (2, H, D_MAX)
    assert (as_sim[..., :4] - as_wide[..., :4]).abs().mean() > 0.05
    assert {n.split(".")[0] for n, _ in head.decoders.named_parameters()} == {"sim", "wide"}


def test_an_embodiment_without_a_decoder_is_refused_by_name(trained):
    policy, _ = trained
    batch = fixed_batch()
    other = Observation(batch["images"][:1], batch["state"][:1], batch["instruction"][:1], ["other"])
    with pytest.raises(ValueError, match=r"no action decoder for embodiment\(s\) \['other'\]; it has decoders for "
                                         r"\['sim', 'wide'\].*train.init_from"):
        policy.predict(other)
    cond = condition(policy, {k: v[:2] for k, v in batch.items()})
    cond.embodiment = []
    with pytest.raises(ValueError, match="picks each sample's action decoder by its embodiment"):
        policy.head.sample(cond)
    with pytest.raises(ValueError, match="BAC"):
        policy.head.sample(condition(policy, {k: v[:2] for k, v in batch.items()}), bac=True)


def test_save_load_gives_identical_actions(trained, tmp_path):
    policy, _ = trained
    obs = observation(fixed_batch(seed=3))
    greedy = policy.predict(obs)
    sampled = policy.predict(obs, generator=torch.Generator().manual_seed(0), temperature=1.0)
    policy.save_pretrained(tmp_path / "latent")
    assert not (tmp_path / "latent" / TOKENIZER_DIR).exists()
    assert "action_tokenizer" not in json.loads((tmp_path / "latent" / "meta.json").read_text())
    loaded = load_policy(tmp_path / "latent")
    assert loaded.config.head.decoders == ["sim", "wide"]
    assert torch.equal(loaded.predict(obs).actions, greedy.actions)
    assert torch.equal(loaded.predict(obs, generator=torch.Generator().manual_seed(0), temperature=1.0).actions,
                       sampled.actions)
    ids = loaded.head.action_ids
    assert torch.equal(loaded.backbone.lm_head.weight[ids], policy.backbone.lm_head.weight[ids])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as on a GPU
        mixed = loaded.predict(obs).actions
    assert mixed.shape == greedy.actions.shape and torch.isfinite(mixed).all()
    with pytest.raises(ValueError, match="latent head decodes greedily"):
        from vla.test_time.sampling import sample_candidates
        sample_candidates(loaded, obs, 3)


# ---- a new robot: init_from adds a decoder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def new_robot_demos(tiny_run_config) -> ChunkedDemos:
    """The tiny Meta-World demos (4-D actions, 7-D state) named as a robot the latent checkpoint does not know (read
    through the run's own dit model config: the demos carry no latent-action labels, which a latent model reads)."""
    return load_demos(tiny_run_config.model, dataclasses.replace(tiny_run_config.data, embodiment="newbot"))


def test_init_from_adds_a_fresh_decoder_and_keeps_the_pretrained_ones(trained, tiny_run_config, new_robot_demos,
                                                                       tmp_path):
    policy, _ = trained
    policy.save_pretrained(tmp_path / "pretrained")
    model = model_config(tiny_run_config.model.backbone.pretrained, decoders=[])  # this run names no decoder
    tuned, report = init_from_checkpoint(model, new_robot_demos, tmp_path / "pretrained")
    assert sorted(tuned.head.decoders) == ["newbot", "sim", "wide"]
    assert tuned.config.head.decoders == ["newbot", "sim", "wide"]
    new = set(report.new)
    assert new == {f"head.decoders.newbot.{n}" for n, _ in tuned.head.decoders["newbot"].named_parameters()}
    assert new <= set(report.fresh) and not report.reinitialised and not report.unused
    assert any(change.startswith("model.head.decoders: ['sim', 'wide'] -> ['newbot', 'sim', 'wide']")
               for change in report.config_changes), report.config_changes
    for name, tensor in policy.head.decoders.state_dict().items():
        assert torch.equal(tuned.head.decoders.state_dict()[name], tensor), name
    assert report.embodiments["statistics"] == "added"
    # train only the decoders: the backbone (its LLM and latent tokens) frozen, the pretrained decoders move too
    frozen = freeze(tuned, ["backbone"], report.fresh)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in tuned.named_parameters() if n.startswith("head.decoders.")}
    assert frozen and all(n.startswith("backbone.") for n in frozen)
    before = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    idx = torch.tensor([0, 5])
    batch = {"images": new_robot_demos.images[idx], "image_mask": torch.ones(2, 1, dtype=torch.bool),
             "state": tuned.normalizer.normalize_state(new_robot_demos.state[idx], ["newbot"] * 2),
             "actions": torch.zeros(2, H, D_MAX), "action_mask": tuned.normalizer.action_mask("newbot").expand(2, -1),
             "action_is_pad": torch.zeros(2, H, dtype=torch.bool), "instruction": new_robot_demos.instructions(idx),
             "embodiment": ["newbot"] * 2, "latent_codes": torch.tensor([[1, 2, 3], [4, 5, 6]])}
    train_on(tuned, batch, steps=1)
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trainable and any(n.startswith("head.decoders.newbot.") for n in changed)
    assert not any(n.startswith("head.decoders.sim.") for n in changed)  # only newbot's rows had actions


def test_init_from_refuses_action_free_data_and_labels_of_another_latent_model(trained, tiny_run_config, tmp_path):
    policy, _ = trained
    policy.save_pretrained(tmp_path / "pretrained")
    model = model_config(tiny_run_config.model.backbone.pretrained)
    video = SimpleNamespace(embodiment="video", has_actions=False)
    with pytest.raises(ValueError, match="has no actions: train.init_from fine-tunes on labelled demos"):
        init_from_checkpoint(model, video, tmp_path / "pretrained", dataset="dataset lab/video")
    # a checkpoint trained on model a's codes: demos labelled by model b mean something else
    meta = {"training": {"datasets": [{"latent_labels": {"lam_fingerprint": "a" * 64}}]}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    codes = np.zeros((4, K), dtype=np.int64)

    def labelled_by(fingerprint: str) -> SimpleNamespace:
        return SimpleNamespace(latent_labels=LatentLabels(codes, "outputs/lam_b", fingerprint, C, frame_gap=4))

    check_latent_model(tmp_path, labelled_by("a" * 64), "dataset lab/demos")
    with pytest.raises(ValueError, match="labelled by outputs/lam_b .bbbbbbbbbbbb., whose codes mean something else"):
        check_latent_model(tmp_path, labelled_by("b" * 64), "dataset lab/demos")


def test_lora_with_the_new_decoder_trains_adapters_and_decoder_alone(trained, tiny_run_config, new_robot_demos,
                                                                      tmp_path):
    policy, _ = trained
    policy.save_pretrained(tmp_path / "pretrained")
    model = model_config(tiny_run_config.model.backbone.pretrained)
    tuned, report = init_from_checkpoint(model, new_robot_demos, tmp_path / "pretrained")
    add_lora(tuned, LoraConfig(targets=["backbone.language.*_proj"], r=4, train_also=["head.decoders.newbot"]),
             report.fresh)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or n.startswith("head.decoders.newbot.") for n in trainable)
    assert any(n.startswith("head.decoders.newbot.") for n in trainable) and any(".lora_" in n for n in trainable)


# ---- vla-train -------------------------------------------------------------------------------------------------


def test_vla_train_on_labelled_demos_fills_the_decoders_and_round_trips(tiny_run_config, tiny_demos_path, tmp_path):
    """vla-train with model.head.type=latent on the tiny demos labelled with random codes: the decoder list is filled
    from the dataset, and the checkpoint predicts the same chunks after loading."""
    root = tmp_path / "labelled"
    shutil.copytree(tiny_demos_path, root)
    frames = len(load_demos(tiny_run_config.model, tiny_run_config.data))
    codes = np.random.default_rng(0).integers(0, C, (frames, K))
    write_labels(root, LatentLabels(codes, "random", "0" * 64, codebook_size=C, frame_gap=4))
    head = LatentHeadConfig(horizon=tiny_run_config.model.head.horizon, codebook_size=C, latent_tokens=K,
                            decoder_width=32, decoder_depth=1, decoder_heads=2)
    model = dataclasses.replace(tiny_run_config.model, head=head)
    data = dataclasses.replace(tiny_run_config.data, root=str(root))
    cfg = dataclasses.replace(tiny_run_config, model=model, data=data, train=dataclasses.replace(
        tiny_run_config.train, steps=2, save_every=2, output_dir=str(tmp_path / "train")))
    policy = load_policy(train(cfg))
    demos = load_demos(model, data)
    assert policy.config.head.decoders == [demos.embodiment]
    idx = torch.tensor([0, 5])
    obs = Observation(images=demos.images[idx], state=demos.state[idx], instruction=demos.instructions(idx),
                      embodiment=[demos.embodiment] * 2)
    first = policy.predict(obs)
    policy.save_pretrained(tmp_path / "copy")
    assert torch.equal(load_policy(tmp_path / "copy").predict(obs).actions, first.actions)
    wrong = dataclasses.replace(cfg, model=dataclasses.replace(model, head=dataclasses.replace(head, latent_tokens=2)))
    with pytest.raises(ValueError, match=f"--model.head.latent_tokens {K} --model.head.codebook_size {C}"):
        train(wrong)
