"""VLMBackbone on tiny random PaliGemma / SmolVLM / Qwen2.5-VL checkpoints built offline from configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vla.backbones import BackboneConfig, VLMBackbone
from vla.backbones.tiny import ARGS_FILE, build_tiny_vlm

FAMILIES = ["paligemma", "smolvlm", "qwen2_5_vl"]
INSTRUCTIONS = ["push the puck", "open the drawer", "pick up the red block and put it in the bowl"]
TINY = dict(image_size=32, patch_size=8, hidden_size=64, vision_layers=1, text_layers=2, heads=2, vocab_size=400)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_vlms")
    return {family: build_tiny_vlm(family, root / family, INSTRUCTIONS, **TINY) for family in FAMILIES}


def load(tiny_dirs: dict[str, Path], family: str, **kwargs) -> VLMBackbone:
    torch.manual_seed(0)
    return VLMBackbone(BackboneConfig(family, pretrained=str(tiny_dirs[family]), **kwargs)).eval()


def images(batch: int, cams: int = 1, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, cams, *size, 3), generator=gen, dtype=torch.uint8)


def test_config_rejects_unknown_family_and_empty_path() -> None:
    with pytest.raises(ValueError, match="known families: paligemma, smolvlm, qwen2_5_vl"):
        BackboneConfig(family="llava")
    with pytest.raises(ValueError, match="pretrained is empty"):
        VLMBackbone(BackboneConfig("paligemma"))


def test_missing_checkpoint_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(OSError, match="no_such_model"):
        VLMBackbone(BackboneConfig("paligemma", pretrained=str(missing)))


@pytest.mark.parametrize("family", FAMILIES)
def test_output_shapes_and_mask(tiny_dirs: dict[str, Path], family: str) -> None:
    backbone = load(tiny_dirs, family)
    batch, cams = 3, 2
    out = backbone(images(batch, cams, size=(40, 48)), INSTRUCTIONS)
    lengths = torch.tensor([len(backbone.text_ids(text)) for text in INSTRUCTIONS])
    image_tokens = out.token_mask.shape[1] - int(lengths.max()) - 1
    assert out.tokens.shape == (batch, out.token_mask.shape[1], backbone.hidden_size)
    assert out.token_mask.dtype == torch.bool
    assert out.token_mask.sum(1).tolist() == (image_tokens + lengths + 1).tolist()
    assert out.cognition.shape == (batch, backbone.hidden_size)
    last_real = out.token_mask.sum(1) - 1
    torch.testing.assert_close(out.cognition, out.tokens[torch.arange(batch), last_real])
    one_cam = backbone(images(batch, 1, size=(40, 48)), INSTRUCTIONS)
    assert image_tokens > one_cam.token_mask.shape[1] - int(lengths.max()) - 1  # each camera adds tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_cognition_does_not_depend_on_batch_padding(tiny_dirs: dict[str, Path], family: str) -> None:
    backbone = load(tiny_dirs, family)
    frames = images(2, 2)
    with torch.no_grad():
        alone = backbone(frames[:1], INSTRUCTIONS[:1])
        batched = backbone(frames, [INSTRUCTIONS[0], INSTRUCTIONS[2]])
    assert batched.token_mask.shape[1] > alone.token_mask.shape[1]  # sample 0 is padded in the batch
    torch.testing.assert_close(batched.cognition[:1], alone.cognition, atol=1e-5, rtol=0)
    real = alone.token_mask.shape[1]
    torch.testing.assert_close(batched.tokens[:1, :real], alone.tokens, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_cognition_token_and_vision(tiny_dirs: dict[str, Path], family: str) -> None:
    backbone = load(tiny_dirs, family).train()
    backbone(images(2), INSTRUCTIONS[:2]).cognition.pow(2).sum().backward()
    assert backbone.cognition_token.grad is not None and backbone.cognition_token.grad.abs().sum() > 0
    vision = getattr(backbone.vlm, backbone.family.vision_modules[0])
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in vision.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_mixed_precision_stays_close(tiny_dirs: dict[str, Path], family: str) -> None:
    """Under bf16 autocast (as on a GPU) the tokens stay within bf16 rounding of the fp32 ones (Qwen2.5-VL: its
    windowed vision tower and M-RoPE too)."""
    backbone = load(tiny_dirs, family)
    with torch.no_grad():
        exact = backbone(images(3), INSTRUCTIONS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = backbone(images(3), INSTRUCTIONS)
    real = exact.token_mask
    assert (mixed.tokens.float() - exact.tokens)[real].norm() < 0.02 * exact.tokens[real].norm()


def _trainable(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_freeze_flags(tiny_dirs: dict[str, Path], family: str) -> None:
    full = load(tiny_dirs, family)
    vision = sum(_trainable(getattr(full.vlm, name)) for name in full.family.vision_modules)
    language = _trainable(getattr(full.vlm, full.family.language_module))
    assert _trainable(full) == vision + language + full.hidden_size
    assert _trainable(load(tiny_dirs, family, freeze_vision=True)) == language + full.hidden_size
    assert _trainable(load(tiny_dirs, family, freeze_language=True)) == vision + full.hidden_size
    frozen = load(tiny_dirs, family, freeze_vision=True, freeze_language=True)
    assert _trainable(frozen) == full.hidden_size  # only the cognition token learns


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_inputs_raise(tiny_dirs: dict[str, Path], family: str) -> None:
    backbone = load(tiny_dirs, family)
    with pytest.raises(ValueError, match="uint8"):
        backbone(images(2).float(), INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match=r"\[B, N, H, W, 3\]"):
        backbone(images(2)[:, 0], INSTRUCTIONS[:2])
    with pytest.raises(ValueError, match="3 instructions for a batch of 2"):
        backbone(images(2), INSTRUCTIONS)


@pytest.mark.parametrize("family", FAMILIES)
def test_reload_and_rebuild_give_identical_outputs(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    first, second = load(tiny_dirs, family), load(tiny_dirs, family)
    frames = images(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(
            first(frames, INSTRUCTIONS[:2]).tokens, second(frames, INSTRUCTIONS[:2]).tokens, atol=0, rtol=0
        )
    rebuilt = build_tiny_vlm(family, tmp_path / "again", INSTRUCTIONS, **TINY)
    for name in ("model.safetensors", "tokenizer.json"):
        assert (rebuilt / name).read_bytes() == (tiny_dirs[family] / name).read_bytes()  # deterministic build


def test_build_is_cached(tiny_dirs: dict[str, Path]) -> None:
    weights = tiny_dirs["paligemma"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_tiny_vlm("paligemma", tiny_dirs["paligemma"], INSTRUCTIONS, **TINY) == tiny_dirs["paligemma"]
    assert weights.stat().st_mtime_ns == stamp
    assert (tiny_dirs["paligemma"] / ARGS_FILE).is_file()


@pytest.mark.parametrize(
    "family, size, atol",
    [
        ("paligemma", (32, 32), 1e-6),
        ("paligemma", (56, 48), 2.5 / 127.5),  # PIL bicubic in uint8 vs torch bicubic: within ~1 grey level
        ("smolvlm", (32, 32), 1e-6),
        ("smolvlm", (48, 48), 6 / 127.5),  # the HF processor uses Lanczos, torch has bicubic only
        ("qwen2_5_vl", (32, 32), 1e-5),  # S x S: its processor, pinned to S, keeps the frame as it is
        ("qwen2_5_vl", (48, 48), 1.5 / (255 * 0.2613)),  # ~1 grey level (over CLIP std): torchvision bicubic
    ],
)
def test_torch_preprocessing_matches_hf_processor(
    tiny_dirs: dict[str, Path], family: str, size: tuple[int, int], atol: float
) -> None:
    backbone = load(tiny_dirs, family)
    # A smooth image: resampling filters differ most on pixel noise, which cameras do not produce.
    coarse = torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=torch.Generator().manual_seed(1)) * 255
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bilinear").round().to(torch.uint8)
    frame = smooth.permute(0, 2, 3, 1)[None]  # [1, 1, H, W, 3]
    if family == "qwen2_5_vl":  # flattened patches [G * G, 3 * 2 * P * P] and the grid (1, G, G)
        ref = backbone.processor(images=frame[0, 0].numpy(), text="<|image_pad|>push", return_tensors="pt")
        patches, grid = backbone.vision_patches(backbone.preprocess(frame))
        assert ref["image_grid_thw"].tolist() == grid.tolist() == [[1, 4, 4]]
        torch.testing.assert_close(patches, ref["pixel_values"], atol=atol, rtol=0)
        return
    hf_images = frame[0, 0].numpy() if family == "paligemma" else [[frame[0, 0].numpy()]]
    ref = backbone.processor(images=hf_images, text="<image>push", return_tensors="pt")["pixel_values"]
    ref = ref.reshape(-1, *ref.shape[-3:])
    torch.testing.assert_close(backbone.preprocess(frame), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("family", ["paligemma", "smolvlm"])  # Qwen2.5-VL's tower has RoPE, no position table
def test_tiny_vision_positions_start_from_sincos(tiny_dirs: dict[str, Path], family: str) -> None:
    from vla.backbones.tiny import sincos_2d

    backbone = load(tiny_dirs, family)
    weights = [m.weight for n, m in backbone.vlm.named_modules() if n.endswith("embeddings.position_embedding")]
    assert len(weights) == 1
    grid = int(weights[0].shape[0] ** 0.5)
    assert torch.allclose(weights[0], sincos_2d(grid, weights[0].shape[1]))
    # neighbouring patches get similar codes, distant ones dissimilar
    codes = torch.nn.functional.normalize(weights[0], dim=1)
    assert codes[0] @ codes[1] > codes[0] @ codes[-1]


def test_backbone_rebuilds_from_saved_structure_without_weights(tiny_dirs, tmp_path) -> None:
    """A backbone rebuilt from its saved config alone (no weights) has the same structure."""
    backbone = load(tiny_dirs, "paligemma")
    backbone.save_structure(tmp_path / "structure")
    assert not list((tmp_path / "structure").glob("*.safetensors"))
    rebuilt = VLMBackbone(BackboneConfig(family="paligemma", pretrained=str(tmp_path / "structure")),
                          load_weights=False)
    assert [n for n, _ in rebuilt.named_parameters()] == [n for n, _ in backbone.named_parameters()]


# ---- what is loaded must be what the family expects -------------------------------------------------


def copy_checkpoint(tiny_dirs: dict[str, Path], family: str, to: Path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_dirs[family], to))


@pytest.mark.parametrize("family, other, model_type", [("paligemma", "smolvlm", "idefics3"),
                                                       ("smolvlm", "paligemma", "paligemma"),
                                                       ("paligemma", "qwen2_5_vl", "qwen2_5_vl"),
                                                       ("qwen2_5_vl", "smolvlm", "idefics3")])
def test_folder_of_another_family_is_refused(tiny_dirs: dict[str, Path], family: str, other: str,
                                             model_type: str) -> None:
    """A folder loaded as the wrong family is refused (HF would build the family's model with every weight random),
    from the hub folder and when rebuilding a policy checkpoint's backbone from its saved structure."""
    for load_weights in (True, False):
        with pytest.raises(ValueError, match=f"is a '{model_type}' model .*backbone.family is '{family}'"):
            VLMBackbone(BackboneConfig(family, pretrained=str(tiny_dirs[other])), load_weights=load_weights)


def test_model_type_of_an_unsupported_vlm_is_named(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    import json

    folder = copy_checkpoint(tiny_dirs, "paligemma", tmp_path / "llava")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    message = "is a 'llava' model .*backbone.family is 'paligemma'.*smolvlm \\(idefics3\\), qwen2_5_vl \\(qwen2_5_vl\\)"
    with pytest.raises(ValueError, match=message):
        VLMBackbone(BackboneConfig("paligemma", pretrained=str(folder)))


@pytest.mark.parametrize("family", FAMILIES)
def test_missing_pretrained_weights_are_refused(tiny_dirs: dict[str, Path], family: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy_checkpoint(tiny_dirs, family, tmp_path / family)
    weights = load_file(folder / "model.safetensors")
    dropped = [k for k in weights if "layers.0." in k and "vision" not in k]  # the first LLM layer
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"lacks {len(dropped)} pretrained weights the {family} model needs"):
        VLMBackbone(BackboneConfig(family, pretrained=str(folder)))


@pytest.mark.parametrize("family", FAMILIES)
def test_folder_without_image_processor_says_how_to_add_one(tiny_dirs: dict[str, Path], family: str,
                                                             tmp_path: Path) -> None:
    folder = copy_checkpoint(tiny_dirs, family, tmp_path / family)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match=r"no image processor \(preprocessor_config.json\).*save_pretrained"):
        VLMBackbone(BackboneConfig(family, pretrained=str(folder)))


# ---- Qwen2.5-VL: multimodal RoPE and a pinned resolution --------------------------------------------------------


def qwen_reference_ids(backbone: VLMBackbone, cameras: int, suffix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's prompt as HF token ids (each image as its <|image_pad|> placeholders, the cognition slot and
    `suffix` more text tokens as pad tokens) and the 2-D attention mask: what `Qwen2_5_VLModel` is called with."""
    tokens = (backbone.image_size // 16) ** 2  # patch 8, 2 x 2 merged
    pad = backbone.processor.tokenizer.pad_token_id
    rows = []
    for text in INSTRUCTIONS:
        row = list(backbone._lead_ids)
        for _ in range(cameras):
            row += backbone._open_ids + [backbone.vlm.config.image_token_id] * tokens + backbone._close_ids
        rows.append(row + backbone.text_ids(text) + [pad] * (1 + suffix))
    width = max(map(len, rows))
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return torch.tensor([r + [pad] * (width - len(r)) for r in rows]), mask


def test_qwen_positions_are_get_rope_index(tiny_dirs: dict[str, Path]) -> None:
    """3-D position ids [3, B, L] as HF's own get_rope_index gives them for the same prompt, two cameras; the
    suffix after the cached prefix gets those of text tokens following the cognition token."""
    backbone = load(tiny_dirs, "qwen2_5_vl")
    frames = images(3, 2)
    inputs = backbone.llm_inputs(frames, INSTRUCTIONS)
    with torch.no_grad():
        prefix = backbone(frames, INSTRUCTIONS, keep_cache=True).past_key_values
    ids, mask = qwen_reference_ids(backbone, cameras=2, suffix=3)
    grid = torch.tensor([[1, 4, 4]] * 6)  # patches per image before merging
    expected, _ = backbone.vlm.get_rope_index(ids, image_grid_thw=grid, attention_mask=mask)
    assert inputs.position_ids.shape == (3, 3, ids.shape[1] - 3)
    real = inputs.token_mask
    assert torch.equal(inputs.position_ids[:, real], expected[:, :, :-3][:, real])
    for i, length in enumerate(real.sum(1).tolist()):
        assert torch.equal(prefix.suffix_positions(0, 3)[:, i], expected[:, i, length:length + 3])
        assert torch.equal(prefix.suffix_positions(2, 1)[:, i], expected[:, i, length + 2:length + 3])
    # an image's 2 x 2 tokens: t fixed, h / w over the grid; the text after it continues from the largest + 1
    first = len(backbone._lead_ids) + len(backbone._open_ids)
    image = inputs.position_ids[:, 0, first:first + 4] - first
    assert image.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 1, 0, 1]]
    assert inputs.position_ids[:, 0, first + 4].tolist() == [first + 2] * 3  # <|vision_end|>


def test_qwen_prefix_equals_the_hf_model(tiny_dirs: dict[str, Path]) -> None:
    """The backbone's LLM hidden states == Qwen2_5_VLModel's forward (its processor's pixels, its own image
    placement and rope index) at every real token before the cognition token (causal: unaffected by it)."""
    backbone = load(tiny_dirs, "qwen2_5_vl")
    frames = images(3, 2)
    ids, mask = qwen_reference_ids(backbone, cameras=2)
    pixels = backbone.processor.image_processor(images=list(frames.flatten(0, 1).numpy()), return_tensors="pt")
    with torch.no_grad():
        ours = backbone(frames, INSTRUCTIONS)
        ref = backbone.vlm(input_ids=ids, attention_mask=mask, pixel_values=pixels["pixel_values"],
                           image_grid_thw=pixels["image_grid_thw"]).last_hidden_state
    before_cog = mask.bool() & (torch.arange(ids.shape[1]) < (mask.sum(1) - 1)[:, None])
    assert torch.equal(ours.token_mask, mask.bool())
    torch.testing.assert_close(ours.tokens[before_cog], ref[before_cog], atol=1e-5, rtol=1e-4)


def test_qwen_resolution_is_pinned_and_saved(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """A processor with a pixel range takes backbone.image_size (else 224), pins min = max pixels to it and saves
    that with the backbone; sizes off the 16 px token grid or outside the range, and a size for a fixed-resolution
    family, are refused."""
    import json

    folder = copy_checkpoint(tiny_dirs, "qwen2_5_vl", tmp_path / "ranged")
    config = json.loads((folder / "preprocessor_config.json").read_text())
    ranged = {**config, "min_pixels": 16 * 16, "max_pixels": 256 * 256,
              "size": {"shortest_edge": 16 * 16, "longest_edge": 256 * 256}}
    (folder / "preprocessor_config.json").write_text(json.dumps(ranged))
    assert load(tiny_dirs, "qwen2_5_vl").image_size == 32  # the tiny checkpoint's processor is pinned to 32 px
    default = VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(folder)))
    assert default.image_size == 224
    backbone = VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(folder), image_size=48)).eval()
    out = backbone(images(1, 2), INSTRUCTIONS[:1])
    assert out.token_mask.shape[1] == len(backbone._lead_ids) + 2 * (1 + 9 + 1) + len(backbone.text_ids(
        INSTRUCTIONS[0])) + 1  # (48 / 16)^2 = 9 tokens per camera
    backbone.save_structure(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "preprocessor_config.json").read_text())
    assert saved["min_pixels"] == saved["max_pixels"] == 48 * 48
    rebuilt = VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(tmp_path / "saved")), load_weights=False)
    assert rebuilt.image_size == 48
    with pytest.raises(ValueError, match="image_size=40 .* multiple of its patch_size \\* merge_size = 16"):
        VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(folder), image_size=40))
    with pytest.raises(ValueError, match="image_size=288 gives 82944 pixels, outside the range \\[256, 65536\\]"):
        VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(folder), image_size=288))
    with pytest.raises(ValueError, match="sees 32 px images .*image_size=48 must be 0 or 32"):
        load(tiny_dirs, "paligemma", image_size=48)
    (folder / "preprocessor_config.json").write_text(json.dumps({**ranged, "patch_size": 14}))  # another model's
    with pytest.raises(ValueError, match=r"makes patches of .* = \(14, 2, 2\), but its vision tower takes \(8, 2, 2\)"):
        VLMBackbone(BackboneConfig("qwen2_5_vl", pretrained=str(folder)))
