"""The hybrid head (HybridVLA): diffusion inside the backbone LLM plus AR action tokens, and their ensemble.

The conftest's tiny random PaliGemma; a bins tokenizer fit on smooth synthetic chunks (test_ar_head's helpers).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from round_trip import train_and_round_trip
from test_ar_head import B, D, H, S, fitted_tokenizer, identity_normalizer, observation
from test_ar_head import fixed_batch as ar_batch

from vla.action_heads import ARHeadConfig, HybridHeadConfig
from vla.action_heads.hybrid import collaborative_ensemble, mean_confidence
from vla.action_heads.prefix import memory_allowed
from vla.backbones import BackboneConfig
from vla.checkpoint import load_policy
from vla.config import ModelConfig
from vla.data.transforms import normalize_batch
from vla.kv_cache import buffer_reuse
from vla.policy import VLAPolicy

CONTEXTS = ["noisy", "none"]


def model_config(vlm_path, family: str = "paligemma", **head) -> ModelConfig:
    head = {"noise_samples_per_cond": 2} | head
    return ModelConfig(backbone=BackboneConfig(family, pretrained=str(vlm_path)),
                       head=HybridHeadConfig(horizon=H, **head), max_action_dim=D, max_state_dim=S, image_size=32,
                       cameras=["corner"])


def hybrid_policy(vlm_path, seed: int = 0, family: str = "paligemma", **head) -> VLAPolicy:
    torch.manual_seed(seed)
    policy = VLAPolicy(model_config(vlm_path, family, **head), identity_normalizer())
    policy.head.set_action_tokenizer(fitted_tokenizer("bins"))
    return policy


def condition(policy: VLAPolicy, batch: dict):
    return policy.condition(batch["images"], batch["state"], batch["instruction"], batch["embodiment"])


def train_on(policy: VLAPolicy, batch: dict, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """AdamW on one fixed batch; every step's losses (total and per term)."""
    opt = torch.optim.AdamW(policy.parameters(), lr=lr)
    history = []
    for step in range(steps):
        torch.manual_seed(step)
        out = policy(normalize_batch(policy.normalizer, batch))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({name: float(value.detach()) for name, value in out.items()})
    return history


@pytest.fixture(scope="module")
def trained(tiny_vlm_path):
    """get(ar_context) -> (policy trained 80 steps on `ar_batch()`, its loss history), trained once per module."""
    cache = {}

    def get(context: str):
        if context not in cache:
            policy = hybrid_policy(tiny_vlm_path, ar_context=context)
            history = train_on(policy, ar_batch(), steps=80)
            cache[context] = policy.eval(), history
        return cache[context]

    return get


def mean(history: list[dict[str, float]], key: str, rows: slice) -> float:
    values = [row[key] for row in history[rows]]
    return sum(values) / len(values)


# ---- vocabulary and config ---------------------------------------------------------------------------------


def test_markers_are_reserved_with_the_action_tokens_in_one_call(tiny_vlm_path):
    policy = hybrid_policy(tiny_vlm_path)
    backbone, head = policy.backbone, policy.head
    text = backbone.text_vocab_size
    assert head.action_ids.tolist() == list(range(text, text + 256))  # bins: 256 action tokens
    assert head.marker_ids.tolist() == [text + 256, text + 257]  # BOD, EOD right after them
    assert backbone.num_added_tokens == 258
    assert backbone.vlm.get_input_embeddings().weight.shape[0] == text + 258
    ar = VLAPolicy(dataclasses.replace(model_config(tiny_vlm_path), head=ARHeadConfig(horizon=H)),
                   identity_normalizer()).head
    assert ar.marker_ids.numel() == 0 and ar.action_ids.tolist() == head.action_ids.tolist()  # ar: unchanged


def test_config_errors_name_the_problem(tiny_vlm_path):
    for bad, match in [({"ar_context": "clean"}, "head.ar_context must be one of"),
                       ({"output": "both"}, "head.output must be one of"),
                       ({"confidence_threshold": 1.5}, r"confidence_threshold .* must be in \[0, 1\]"),
                       ({"ar_loss_weight": -1.0}, "head.ar_loss_weight must be >= 0"),
                       ({"noise_samples_per_cond": 0}, "noise_samples_per_cond must be >= 1")]:
        with pytest.raises(ValueError, match=match):
            HybridHeadConfig(**bad)
    assert HybridHeadConfig().diffusion.num_inference_steps == 5  # the paper's DDIM steps
    with pytest.raises(ValueError, match="freeze_language=false"):
        dataclasses.replace(model_config(tiny_vlm_path),
                            backbone=BackboneConfig("paligemma", pretrained="x", freeze_language=True))
    policy = hybrid_policy(tiny_vlm_path).eval()
    cond = condition(policy, ar_batch())
    with pytest.raises(ValueError, match="BAC"):
        policy.head.sample(cond, bac=True)
    with pytest.raises(ValueError, match="real-time chunking"):
        policy.head.sample(cond, prefix=torch.zeros(B, 2, D))
    with pytest.raises(ValueError, match="output must be one of"):
        policy.head.sample(cond, output="mean")
    assert policy.sampling_settings()["num_inference_steps"] == 5
    assert policy.sampling_settings(num_steps=3)["num_inference_steps"] == 3


# ---- training ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", CONTEXTS)
def test_loss_falls_on_fixed_batch_in_both_terms(trained, context):
    policy, history = trained(context)
    assert history[0]["ar_loss"] == pytest.approx(torch.log(torch.tensor(256.0)).item(), rel=0.05)
    for term in ("diffusion_loss", "ar_loss"):
        assert mean(history, term, slice(-5, None)) < 0.6 * mean(history, term, slice(0, 5)), term
    first = history[0]
    assert first["loss"] == pytest.approx(first["diffusion_loss"] + first["ar_loss"], rel=1e-5)  # weight 1


def test_ar_loss_weight_scales_the_ar_term(tiny_vlm_path):
    batch = ar_batch()
    outs = []
    for weight in (1.0, 0.25):
        policy = hybrid_policy(tiny_vlm_path, ar_loss_weight=weight)
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(policy(normalize_batch(policy.normalizer, batch)))
    for out, weight in zip(outs, (1.0, 0.25), strict=True):
        torch.testing.assert_close(out["loss"], out["diffusion_loss"] + weight * out["ar_loss"])
    torch.testing.assert_close(outs[0]["ar_loss"], outs[1]["ar_loss"])  # same weights, same draws


# ---- masks -------------------------------------------------------------------------------------------------


def test_hidden_continuation_tokens_keep_positions_but_are_never_attended(tiny_vlm_path):
    """append(A); append(B, visible=False); append(C) == one pass over [A, B, C] in which C's rows cannot see B."""
    policy = hybrid_policy(tiny_vlm_path).eval()
    prefix = condition(policy, ar_batch()).backbone.past_key_values
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(B, n, policy.backbone.hidden_size, generator=g) * 0.1 for n in (2, 3, 2)]
    with torch.no_grad():
        continuation = prefix.continuation()
        got = [continuation.append(parts[0]), continuation.append(parts[1], visible=False),
               continuation.append(parts[2])]
        allowed = memory_allowed(prefix.token_mask, 7, causal_queries=True).clone()
        allowed[:, :, 5:, -5:-2] = False  # C (suffix rows 5, 6) does not see B (suffix keys 2..4)
        full = prefix.extend(torch.cat(parts, 1) / prefix.input_scale, allowed)
        visible = prefix.extend(torch.cat(parts, 1) / prefix.input_scale,
                                memory_allowed(prefix.token_mask, 7, causal_queries=True))
    torch.testing.assert_close(torch.cat(got, 1), full, atol=1e-5, rtol=1e-4)
    assert (got[2] - visible[:, 5:]).abs().max() > 1e-4  # hiding B changed what C computes


def one_pass_reference(head, cond, noisy, t, ids):
    """The hybrid suffix [state, BOD, t, x, EOD, a_0 .. a_{T-2}] in ONE LLM pass with an explicit mask (causal;
    with ar_context none the AR rows cannot see the span): (predicted noise [B, H, D], AR logits [B, T, slots],
    the mask [B, 1, N, L + N])."""
    prefix, vocabulary = head.prefix(cond)
    state = head.state_proj(cond.proprio)[:, None] * prefix.input_scale
    tokens = vocabulary.embed(head.action_ids[ids[:, :-1]])
    suffix = torch.cat([state, head.span(cond, noisy, t), tokens], dim=1)  # (B, N, C), N = 1 + H + 3 + T - 1
    eod = 1 + H + 2
    allowed = memory_allowed(prefix.token_mask, suffix.shape[1], causal_queries=True).clone()
    if head.config.ar_context == "none":
        allowed[:, :, eod + 1:, -suffix.shape[1] + 1:-suffix.shape[1] + eod + 1] = False  # AR rows x span keys
    hidden = prefix.extend(suffix / prefix.input_scale, allowed)
    first = eod if head.config.ar_context == "noisy" else 0  # the first id is predicted at EOD / the state token
    ar_hidden = torch.cat([hidden[:, first:first + 1], hidden[:, eod + 1:]], dim=1)
    return head.denoiser.project(hidden[:, 3:3 + H]), head.slot_logits(vocabulary, ar_hidden), allowed


@pytest.mark.parametrize("context", CONTEXTS)
def test_ar_tokens_cannot_see_the_clean_actions_and_the_span_cannot_see_the_ar_tokens(trained, context):
    """The head's sequential passes equal one pass with the layout's mask, and in that pass: the denoiser's
    prediction does not change when the AR ids (the clean chunk, teacher-forced) change; no AR position sees its
    own or later ids; with ar_context none the AR logits do not change with the noisy span, with noisy they do."""
    policy, _ = trained(context)
    head, batch = policy.head, ar_batch(seed=3)
    cond = condition(policy, batch)
    valid = torch.ones(B, H, D, dtype=torch.bool)
    ids, _ = head.targets(batch["actions"], valid)
    g = torch.Generator().manual_seed(0)
    noisy, t, other_noisy = torch.randn(B, H, D, generator=g), torch.full((B,), 30), torch.randn(B, H, D, generator=g)
    other_ids = (ids + 1 + torch.randint(0, 200, ids.shape, generator=g)) % 256
    with torch.no_grad():
        continuation, first, prediction = head.open(cond, noisy, t)
        logits = head.logits(cond, ids, opened=(continuation, first))
        ref_prediction, ref_logits, allowed = one_pass_reference(head, cond, noisy, t, ids)
        torch.testing.assert_close(prediction, ref_prediction, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)

        changed_ids = one_pass_reference(head, cond, noisy, t, other_ids)
        torch.testing.assert_close(changed_ids[0], ref_prediction)  # the denoiser never sees the AR ids
        cut = ids.shape[1] // 2
        later = torch.cat([ids[:, :cut], other_ids[:, cut:]], dim=1)
        torch.testing.assert_close(one_pass_reference(head, cond, noisy, t, later)[1][:, :cut + 1],
                                   ref_logits[:, :cut + 1])  # position i sees ids < i only

        changed_span = one_pass_reference(head, cond, other_noisy, torch.full((B,), 90), ids)
        span_effect = (changed_span[1] - ref_logits).abs().max()
    assert (changed_span[0] - ref_prediction).abs().max() > 1e-4  # the denoiser does read its span
    if context == "none":
        assert span_effect == 0
    else:
        assert span_effect > 1e-4
    # the mask itself: no suffix row before the AR tokens may see an AR token
    suffix_len = 1 + H + 3 + ids.shape[1] - 1
    keys = allowed[:, 0, :, -suffix_len:]
    assert not keys[:, :1 + H + 3, 1 + H + 3:].any()


# ---- inference ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("context", CONTEXTS)
def test_ar_decoding_with_kv_cache_equals_recompute(trained, context):
    policy, _ = trained(context)
    head = policy.head
    cond = condition(policy, ar_batch())  # the training observations: their chunks' ids differ row to row
    noise = torch.randn(B, H, D, generator=torch.Generator().manual_seed(0))
    first_t = head.process.inference_timesteps(None, noise.device)[0].expand(B)
    opener = lambda: head.open(cond, noise, first_t)[:2]  # noqa: E731
    with torch.no_grad():
        cached, cached_probs = head.decode_ids(cond, opener=opener)
        full, full_probs = head.decode_ids(cond, kv_cache=False, opener=opener)
        forced = head.logits(cond, cached, opened=opener()).argmax(-1)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_probs, full_probs)
    assert torch.equal(forced, cached)  # teacher forcing the decoded ids gives them back
    assert len(set(cached.flatten().tolist())) > 3 and len(set(map(tuple, cached.tolist()))) > 1  # not trivial
    assert cached.max() < head.action_tokenizer.vocab_size  # only action ids, never a marker
    seeded = {"generator": torch.Generator().manual_seed(1)}
    chunk = head.sample(cond, **seeded)
    assert torch.equal(chunk, head.sample(cond, generator=torch.Generator().manual_seed(1), kv_cache=False))
    with buffer_reuse(False):  # every denoising step and token concatenates the prefix keys anew
        torch.testing.assert_close(chunk, head.sample(cond, generator=torch.Generator().manual_seed(1)))
    assert chunk.shape == (B, H, D) and chunk.abs().max() <= 1.0


def test_collaborative_ensemble_averages_only_when_the_ar_tokens_are_confident():
    g = torch.Generator().manual_seed(0)
    diffusion, ar = torch.randn(3, H, D, generator=g), torch.randn(3, H, D, generator=g)
    fused, averaged = collaborative_ensemble(diffusion, ar, torch.tensor([0.5, 0.96, 0.99]), threshold=0.96)
    assert averaged.tolist() == [False, True, True]
    assert torch.equal(fused[0], diffusion[0])
    torch.testing.assert_close(fused[1:], (diffusion[1:] + ar[1:]) / 2)
    # mean confidence: every id, or up to and including each row's first END
    ids = torch.tensor([[1, 2, 9, 9], [1, 2, 3, 4]])
    probs = torch.tensor([[0.5, 0.7, 0.9, 1.0], [0.2, 0.4, 0.6, 0.8]])
    torch.testing.assert_close(mean_confidence(ids, probs), torch.tensor([0.775, 0.5]))
    torch.testing.assert_close(mean_confidence(ids, probs, end_id=9), torch.tensor([0.7, 0.5]))


def test_the_head_fuses_by_the_ar_confidence(tiny_vlm_path):
    """The AR confidence forced through the LM head's action rows: zero rows make every id 1 / 256 likely (the
    chunk is the diffusion chunk); rows scaled up make every decoded id near-certain (the mean of both chunks)."""
    policy = hybrid_policy(tiny_vlm_path).eval()
    head = policy.head
    cond = condition(policy, ar_batch())
    rows = policy.backbone.lm_head.weight  # tied to the token table (PaliGemma)
    original = rows[head.action_ids].detach().clone()

    def draw(**options):
        return head.sample(cond, generator=torch.Generator().manual_seed(0), **options)

    diffusion = draw(output="diffusion")
    with torch.no_grad():
        rows[head.action_ids] = 0.0
    assert torch.equal(draw(output="diffusion"), diffusion)  # the diffusion branch reads no action-token rows
    assert torch.equal(draw(), diffusion)
    torch.testing.assert_close(head.last_ensemble["confidence"], torch.full((B,), 1 / 256))
    assert not head.last_ensemble["averaged"].any()
    stats = head.ensemble_stats()
    assert (stats["chunks"], stats["averaged"], stats["diffusion_only"], stats["share_averaged"]) == (B, 0, B, 0)

    with torch.no_grad():
        rows[head.action_ids] = original * 1000.0  # the same argmax, near-certain
    ar = draw(output="ar")
    assert torch.equal(draw(output="diffusion"), diffusion)
    fused = draw()
    assert head.last_ensemble["confidence"].min() > 0.99 and head.last_ensemble["averaged"].all()
    torch.testing.assert_close(fused, (diffusion + ar) / 2)
    assert not torch.equal(fused, diffusion)
    stats = head.ensemble_stats()
    assert (stats["chunks"], stats["averaged"], stats["share_averaged"]) == (2 * B, B, 0.5)
    assert stats["mean_confidence"] == pytest.approx((1 / 256 * B + head.last_ensemble["confidence"].sum()) / (2 * B))
    head.reset_ensemble_stats()
    assert head.ensemble_stats()["chunks"] == 0 and head.ensemble_stats()["share_averaged"] is None


# ---- checkpoints -------------------------------------------------------------------------------------------


def test_save_load_gives_identical_actions(trained, tmp_path):
    policy, _ = trained("noisy")
    obs = observation(ar_batch())
    first = policy.predict(obs, generator=torch.Generator().manual_seed(0))
    other = policy.predict(obs, generator=torch.Generator().manual_seed(1))
    policy.save_pretrained(tmp_path / "hybrid")
    loaded = load_policy(tmp_path / "hybrid")
    assert loaded.config.head == policy.config.head
    assert torch.equal(loaded.head.marker_ids, policy.head.marker_ids)
    again = loaded.predict(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.actions, first.actions)
    assert not torch.equal(first.actions, other.actions)  # the diffusion branch draws noise
    markers = policy.head.marker_ids
    assert torch.equal(loaded.backbone.lm_head.weight[markers], policy.backbone.lm_head.weight[markers])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed precision, as on a GPU
        mixed = loaded.predict(obs, generator=torch.Generator().manual_seed(0)).actions
    assert mixed.shape == first.actions.shape and torch.isfinite(mixed).all()


def test_vla_train_fits_the_tokenizer_and_the_checkpoint_round_trips(tiny_run_config, tmp_path):
    """`--model.head.type hybrid` through vla-train: the tokenizer is fit before the first step, and the
    checkpoint predicts the same chunks after loading."""
    head = HybridHeadConfig(horizon=tiny_run_config.model.head.horizon, noise_samples_per_cond=2)
    model = dataclasses.replace(tiny_run_config.model, head=head)
    policy, demos, _, first = train_and_round_trip(tiny_run_config, model, tmp_path, steps=2)
    assert policy.config.head.type == "hybrid" and policy.head.action_tokenizer is not None
    assert first.actions.shape == (2, head.horizon, demos.actions.shape[-1])
