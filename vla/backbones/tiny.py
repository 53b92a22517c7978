"""Tiny, randomly initialised VLMs of the real HF classes, saved like a hub checkpoint.

No weights can be downloaded here, so tests and CPU experiments build a small model from its config,
train a byte-level BPE tokenizer on the instructions they will use, and `save_pretrained` both, so
that `VLMBackbone` loads them through exactly the `from_pretrained` path a real checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GemmaTokenizerFast,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2TokenizerFast,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    SiglipImageProcessor,
)
from transformers.image_utils import PILImageResampling

from vla.backbones.config import KNOWN_FAMILIES

ARGS_FILE = "vla_tiny_build.json"
_BASE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]
# Idefics3Processor looks these up by name; without them they would all map to <unk>.
_IDEFICS3_SPECIALS = ["<fake_token_around_image>", "<global-img>", "<end_of_utterance>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
# Qwen2.5-VL's vision markers and chat-template tokens, named as in its real tokenizer.
# SmolVLM's tokenizer names its image and turn tokens (tokenizer_config.json "extra_special_tokens"); SmolVLM's
# processor and LeRobot's SmolVLA read them as attributes (tokenizer.fake_image_token_id, ...).
_SMOLVLM_TOKEN_NAMES = {"fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
                        "image_token": "<image>", "end_of_utterance_token": "<end_of_utterance>"}
_QWEN_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
QWEN_MERGE = 2  # Qwen2.5-VL merges 2 x 2 neighbouring patches into one LLM token (spatial_merge_size)
_IMAGE_STATS = dict(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json")


def build_tiny_vlm(
    family: str,
    out_dir: str | Path,
    instructions: list[str],
    image_size: int = 64,
    patch_size: int = 8,
    hidden_size: int = 128,
    vision_layers: int = 2,
    text_layers: int = 2,
    heads: int = 4,
    vocab_size: int = 512,
    seed: int = 0,
) -> Path:
    """Build (or reuse) a tiny random `family` VLM with processor in out_dir and return out_dir.

    A folder that already holds a complete checkpoint built with the same arguments is returned as is.
    """
    if family not in KNOWN_FAMILIES:
        raise ValueError(f"unknown backbone family {family!r}; known families: {', '.join(KNOWN_FAMILIES)}")
    if not instructions:
        raise ValueError("build_tiny_vlm needs at least one instruction to train its tokenizer on")
    if image_size % patch_size or hidden_size % heads:
        raise ValueError(
            f"image_size {image_size} must be divisible by patch_size {patch_size} and "
            f"hidden_size {hidden_size} by heads {heads}"
        )
    if family == "qwen2_5_vl" and image_size % (patch_size * QWEN_MERGE):
        raise ValueError(f"a Qwen2.5-VL image_size must be a multiple of patch_size * {QWEN_MERGE} (the 2 x 2 merged "
                         f"patches of one LLM token) = {patch_size * QWEN_MERGE}; got {image_size}")
    out = Path(out_dir)
    corpus = sorted(set(instructions))
    args = dict(
        family=family,
        instructions=corpus,
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=hidden_size,
        vision_layers=vision_layers,
        text_layers=text_layers,
        heads=heads,
        vocab_size=vocab_size,
        seed=seed,
        position_init="sincos_2d",  # recorded so models built before this init are not reused
        vision_use_head=False,
    )
    if family == "smolvlm":  # recorded so tiny SmolVLMs built before the token names are not reused
        args["tokenizer_names"] = "smolvlm2"
    if _is_built(out, args):
        return out
    specials = _BASE_SPECIALS + {"smolvlm": _IDEFICS3_SPECIALS, "qwen2_5_vl": _QWEN_SPECIALS}.get(family, [])
    # The processors type-check for their family's tokenizer class.
    tokenizer_cls = {"paligemma": GemmaTokenizerFast, "qwen2_5_vl": Qwen2TokenizerFast}.get(family,
                                                                                            PreTrainedTokenizerFast)
    tokenizer = train_tokenizer(corpus, vocab_size, specials, tokenizer_cls,
                                names=_SMOLVLM_TOKEN_NAMES if family == "smolvlm" else None)
    processor = _build_processor(family, tokenizer, image_size, patch_size)
    torch.manual_seed(seed)
    model = _build_model(family, processor, args)
    if family != "qwen2_5_vl":  # Qwen2.5-VL's tower has no learned position table: 2-D RoPE places its patches
        _init_vision_positions_sincos(model, image_size // patch_size)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / ARGS_FILE).write_text(json.dumps(args, indent=1))
    return out


def train_tokenizer(
    corpus: list[str],
    vocab_size: int,
    specials: list[str],
    tokenizer_cls: type[PreTrainedTokenizerFast] = PreTrainedTokenizerFast,
    names: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on corpus offline and wrap it for transformers; `names` gives special tokens
    attribute names ({"image_token": "<image>"} -> tokenizer.image_token, tokenizer.image_token_id)."""
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    return tokenizer_cls(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=specials[4:],
        extra_special_tokens=names or {},
    )


def _is_built(out: Path, args: dict) -> bool:
    marker = out / ARGS_FILE
    if not marker.is_file() or not all((out / name).is_file() for name in _CHECKPOINT_FILES):
        return False
    return json.loads(marker.read_text()) == args


def _build_processor(
    family: str, tokenizer: PreTrainedTokenizerFast, image_size: int, patch_size: int
) -> ProcessorMixin:
    n_patches = (image_size // patch_size) ** 2
    if family == "qwen2_5_vl":
        # Dynamic resolution pinned to one size: smart_resize keeps an image_size x image_size frame as it is
        # (min_pixels = max_pixels = its area), so every square camera frame gives (image_size / 16)^2 tokens.
        pixels = dict(min_pixels=image_size**2, max_pixels=image_size**2, patch_size=patch_size,
                      merge_size=QWEN_MERGE, temporal_patch_size=2)
        return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                                   video_processor=Qwen2VLVideoProcessor(**pixels))
    if family == "paligemma":
        images = SiglipImageProcessor(
            size={"height": image_size, "width": image_size},
            resample=PILImageResampling.BICUBIC,
            image_seq_length=n_patches,
            **_IMAGE_STATS,
        )
        return PaliGemmaProcessor(image_processor=images, tokenizer=tokenizer)
    images = Idefics3ImageProcessor(
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
        do_image_splitting=False,
        **_IMAGE_STATS,
    )
    return Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=n_patches // 4)


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position features [grid * grid, dim], row-major (as in MAE, He et al. 2022)."""
    quarter = dim // 4
    omega = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = [f(c.flatten()[:, None] * omega[None]) for c in (xs, ys) for f in (torch.sin, torch.cos)]
    emb = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(emb, (0, dim - emb.shape[1])).float()


def _init_vision_positions_sincos(model: torch.nn.Module, grid: int) -> None:
    """Start the vision tower's learned position embeddings from 2-D sine-cosine features.

    A randomly initialised ViT must otherwise learn where each patch is before it can localise
    anything; with these it knows from step one, which matters for small from-scratch models
    (a pretrained checkpoint brings its own trained embeddings and never comes through here).
    """
    for name, module in model.named_modules():
        if name.endswith("embeddings.position_embedding") and module.weight.shape[0] == grid * grid:
            with torch.no_grad():
                module.weight.copy_(sincos_2d(grid, module.weight.shape[1]))
            return
    raise ValueError(f"no vision position embedding with {grid * grid} positions found in {type(model).__name__}")


def _build_model(family: str, processor: ProcessorMixin, args: dict) -> torch.nn.Module:
    tokenizer = processor.tokenizer
    hidden, heads = args["hidden_size"], args["heads"]
    vision = dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=args["vision_layers"],
        num_attention_heads=heads,
        image_size=args["image_size"],
        patch_size=args["patch_size"],
    )
    text = dict(
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=args["text_layers"],
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        max_position_embeddings=1024,
    )
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    if family == "qwen2_5_vl":
        return _build_qwen(tokenizer, vision, text, args)
    if family == "paligemma":
        config = PaliGemmaConfig(
            # no attention-pooling head: PaliGemma reads the patch tokens, as its real checkpoints do;
            # an unused head would also make DistributedDataParallel fail on parameters without gradients
            vision_config=dict(model_type="siglip_vision_model", vision_use_head=False, **vision),
            text_config=dict(model_type="gemma", **text),
            image_token_index=image_token,
            projection_dim=hidden,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        return PaliGemmaForConditionalGeneration(config).eval()
    config = Idefics3Config(
        vision_config=vision,
        text_config=dict(model_type="llama", **text),
        scale_factor=2,
        image_token_id=image_token,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Idefics3ForConditionalGeneration(config).eval()


def mrope_section(head_dim: int) -> list[int]:
    """Qwen2.5-VL's split of the rotary frequencies (head_dim / 2) into temporal, height and width parts, scaled
    from the real models' [16, 24, 24] of head_dim 128."""
    temporal = head_dim // 8
    height = (head_dim // 2 - temporal) // 2
    return [temporal, height, head_dim // 2 - temporal - height]


def _build_qwen(tokenizer: PreTrainedTokenizerFast, vision: dict, text: dict, args: dict) -> torch.nn.Module:
    """A tiny Qwen2.5-VL: windowed vision tower (last block full attention, as the real ones end every 8 blocks),
    grouped-query attention (half as many key/value heads) and tied embeddings, as Qwen2.5-VL-3B."""
    ids = {name: tokenizer.convert_tokens_to_ids(f"<|{name}|>") for name in
           ("image_pad", "video_pad", "vision_start", "vision_end")}
    vision_config = dict(depth=vision["num_hidden_layers"], hidden_size=vision["hidden_size"],
                         intermediate_size=vision["intermediate_size"], num_heads=vision["num_attention_heads"],
                         patch_size=vision["patch_size"], spatial_merge_size=QWEN_MERGE, temporal_patch_size=2,
                         out_hidden_size=text["hidden_size"], fullatt_block_indexes=[vision["num_hidden_layers"] - 1],
                         window_size=2 * QWEN_MERGE * vision["patch_size"])  # windows of 2 x 2 LLM tokens
    text_config = dict(text, num_key_value_heads=max(1, text["num_attention_heads"] // 2), tie_word_embeddings=True,
                       rope_scaling={"type": "mrope", "mrope_section": mrope_section(text["head_dim"])})
    config = Qwen2_5_VLConfig(vision_config=vision_config, text_config=text_config, image_token_id=ids["image_pad"],
                              video_token_id=ids["video_pad"], vision_start_token_id=ids["vision_start"],
                              vision_end_token_id=ids["vision_end"], tie_word_embeddings=True)
    return Qwen2_5_VLForConditionalGeneration(config).eval()
