"""UniVLA's latent action model (LAM; Bu et al., RSS 2025, arXiv 2505.06111; METHODS.md section 5): a VQ-VAE over
frame pairs whose discrete codes say what changed between frame t and frame t + k, learned without actions.

Shapes: B pairs, P patches of F feature numbers (`vla.latent.features`), D = hidden, K = tokens_per_frame,
C = codebook_size, Z = code_dim.

- Inverse dynamics (encoder): a transformer over [features of frame t + position + frame-t embedding, features of
  frame t + k + position + frame-t+k embedding, context tokens, K learned query tokens]; the queries' outputs,
  projected to Z, are K latent vectors [B, K, Z].
- Bottleneck: `vector_quantize_pytorch.VectorQuantize` (the library vla/tokenizers/vq.py uses): C codes, updated by
  EMA of their assigned vectors (`ema_decay`), k-means-initialised on the first batch, a code whose EMA usage falls
  below `dead_code_threshold` of its uniform share is restarted at a batch vector; straight-through gradient.
- Forward dynamics (decoder): a transformer over [features of frame t + position, quantised latents + token position,
  context tokens] predicting the features of frame t + k as frame t's plus a change (the output layer starts at
  zero, so training starts from the copy-frame-t prediction and the codes must explain the change).
- Loss: MSE(predicted, true features of frame t + k) + commitment_weight * ||z - sg(q)||^2.

Two stages (UniVLA):
- Stage 1: context = the instruction (a frozen text embedding, `vla.latent.text`, projected to one token), given to
  the encoder and the decoder. What the task is comes from the language, so the stage-1 codes take up the change the
  instruction does not explain (UniVLA's "task-irrelevant" dynamics).
- Stage 2: stage 1 frozen (its codes computed as in stage 1, with the instruction). A new encoder and a NEW codebook
  (initialised from stage 1's encoder / decoder weights where shapes agree, as UniVLA continues from its stage-1
  checkpoint) see the pair and the frozen stage-1 latents as context, no language; the new decoder predicts frame
  t + k from frame t, the stage-2 latents and the stage-1 latents. Stage-2 codes ("task-centric") are the labels.

Deviation from UniVLA: one camera, one pair per sample (UniVLA's encoder takes a clip and its transformer is
spatio-temporal); plain pre-norm transformer blocks; the decoder predicts a residual. Sizes are CPU-sized by default
(UniVLA: DINOv2-B features, 12 + 12 blocks of 768, Z = 128, C = 16, K = 4, batch 512, 100k steps).

Saved as a folder: lam.json (config, frame gap, the feature-space and text fingerprints, training history) and
lam.safetensors (the weights, without the frozen feature / text models, which are loaded from their own source and
checked against the fingerprints). `fingerprint()` = sha256 of the weights file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

from vla.latent.features import FeatureConfig, PatchFeaturesConfig, feature_config_from_dict
from vla.latent.text import HASHED, build_text_encoder, check_instructions
from vla.versioned import read_versioned_json

CONFIG_FILE = "lam.json"
WEIGHTS_FILE = "lam.safetensors"
FORMAT_VERSION = 1
FROZEN = ("features.", "text.")  # submodules loaded from their own source, not saved with the LAM


@dataclass
class LAMConfig:
    features: FeatureConfig = field(default_factory=PatchFeaturesConfig)  # --lam.features.type patches | dinov2
    image_size: int = 64  # frames are read at S x S (a multiple of the feature space's patch size)
    camera: str = ""  # the image slot pairs are read from; "" = each dataset's first
    text: str = HASHED  # hashed | a transformers text encoder (hub id or folder): the stage-1 instruction embedding
    text_dim: int = 64  # size of the hashed word vectors (a pretrained encoder has its own)
    frame_gap: int = 0  # k: frames between the two of a pair; 0 = about one second (round(fps) of the data)
    codebook_size: int = 16  # C codes per stage (UniVLA: 16)
    tokens_per_frame: int = 4  # K latent tokens per pair (UniVLA: 4)
    code_dim: int = 32  # Z (UniVLA: 128)
    hidden: int = 128  # D (UniVLA: 768)
    heads: int = 4
    encoder_depth: int = 2  # transformer blocks of the inverse dynamics (UniVLA: 12)
    decoder_depth: int = 2  # of the forward dynamics (UniVLA: 12)
    ema_decay: float = 0.8  # codebook EMA decay (vector-quantize-pytorch's default)
    commitment_weight: float = 0.25  # UniVLA's vq_beta
    # a code whose EMA count of assigned vectors per batch falls below this share of the uniform count
    # (batch_size * K / C) is restarted at a vector of the batch; 0 = never restart
    dead_code_threshold: float = 0.1
    kmeans_init: bool = True  # codebooks start from k-means on the first batch (else uniform random)
    stage1_steps: int = 1000
    stage2_steps: int = 1000
    batch_size: int = 64
    lr: float = 3e-4  # AdamW, cosine-decayed to lr / 10 in each stage
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0  # weights, pair order, k-means and restarts: the same seed and data give the same model on CPU
    device: str = "cpu"
    num_workers: int = 0  # DataLoader workers reading pairs (streamed video datasets want some)
    log_every: int = 50  # steps per entry of the loss history

    def __post_init__(self) -> None:
        for name in ("image_size", "codebook_size", "tokens_per_frame", "code_dim", "hidden", "heads",
                     "encoder_depth", "decoder_depth", "stage1_steps", "stage2_steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"lam.{name} must be >= 1; got {getattr(self, name)}")
        if self.codebook_size < 2 or self.hidden % self.heads:
            raise ValueError(f"lam.codebook_size must be >= 2 and lam.hidden a multiple of lam.heads; got "
                             f"codebook_size={self.codebook_size}, hidden={self.hidden}, heads={self.heads}")
        if self.frame_gap < 0 or self.num_workers < 0:
            raise ValueError(f"lam.frame_gap and lam.num_workers must be >= 0; got {self.frame_gap}, "
                             f"{self.num_workers}")
        if not 0.0 < self.ema_decay < 1.0 or self.commitment_weight < 0 or self.dead_code_threshold < 0:
            raise ValueError(f"lam.ema_decay must be in (0, 1), commitment_weight and dead_code_threshold >= 0; got "
                             f"{self.ema_decay}, {self.commitment_weight}, {self.dead_code_threshold}")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "features": self.features.to_dict()}

    @classmethod
    def from_dict(cls, values: dict) -> LAMConfig:
        return cls(**{**values, "features": feature_config_from_dict(values["features"])})


# --- building blocks ---


def transformer(config: LAMConfig, depth: int) -> nn.Module:
    layer = nn.TransformerEncoderLayer(config.hidden, config.heads, dim_feedforward=4 * config.hidden, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, depth, enable_nested_tensor=False), nn.LayerNorm(config.hidden))


class InverseDynamics(nn.Module):
    """(features of t, features of t + k [B, P, F], context [B, E, D]) -> latents [B, K, Z]."""

    def __init__(self, config: LAMConfig, num_patches: int, feature_dim: int):
        super().__init__()
        d, k = config.hidden, config.tokens_per_frame
        self.patch_in = nn.Linear(feature_dim, d)
        self.position = nn.Parameter(torch.randn(1, num_patches, d) * 0.02)
        self.frame = nn.Parameter(torch.randn(2, d) * 0.02)  # which of the two frames a patch is from
        self.queries = nn.Parameter(torch.randn(1, k, d) * 0.02)
        self.blocks = transformer(config, config.encoder_depth)
        self.to_latent = nn.Linear(d, config.code_dim)

    def forward(self, f_t: Tensor, f_tk: Tensor, context: Tensor) -> Tensor:
        b = f_t.shape[0]
        tokens = torch.cat([self.patch_in(f_t) + self.position + self.frame[0],
                            self.patch_in(f_tk) + self.position + self.frame[1],
                            context, self.queries.expand(b, -1, -1)], dim=1)
        k = self.queries.shape[1]
        return self.to_latent(self.blocks(tokens)[:, -k:])


class ForwardDynamics(nn.Module):
    """(features of t [B, P, F], latent tokens [B, L, D], context [B, E, D]) -> predicted features of t + k
    [B, P, F] = features of t + a change."""

    def __init__(self, config: LAMConfig, num_patches: int, feature_dim: int, num_latents: int):
        super().__init__()
        d = config.hidden
        self.patch_in = nn.Linear(feature_dim, d)
        self.position = nn.Parameter(torch.randn(1, num_patches, d) * 0.02)
        self.latent_position = nn.Parameter(torch.randn(1, num_latents, d) * 0.02)
        self.blocks = transformer(config, config.decoder_depth)
        self.change = nn.Linear(d, feature_dim)
        nn.init.zeros_(self.change.weight)  # start at the copy-frame-t prediction
        nn.init.zeros_(self.change.bias)

    def forward(self, f_t: Tensor, latents: Tensor, context: Tensor) -> Tensor:
        p = f_t.shape[1]
        tokens = torch.cat([self.patch_in(f_t) + self.position, latents + self.latent_position, context], dim=1)
        return f_t + self.change(self.blocks(tokens)[:, :p])


@dataclass
class StageOutput:
    """One stage on a batch: predicted features of t + k [B, P, F], codes int64 [B, K], quantised latents
    [B, K, Z], commitment loss (scalar)."""

    prediction: Tensor
    codes: Tensor
    quantized: Tensor
    commitment: Tensor


class Stage(nn.Module):
    """Encoder, codebook and decoder of one stage. language: the instruction is a context token (stage 1);
    conditioned: the frozen stage-1 latents are context of the encoder and latents of the decoder (stage 2)."""

    def __init__(self, config: LAMConfig, num_patches: int, feature_dim: int, text_dim: int, language: bool,
                 conditioned: bool, batch_vectors: int):
        from vector_quantize_pytorch import VectorQuantize  # imported here: it takes about a second (einx)

        super().__init__()
        d, k = config.hidden, config.tokens_per_frame
        self.encoder = InverseDynamics(config, num_patches, feature_dim)
        self.quantizer = VectorQuantize(
            dim=config.code_dim, codebook_size=config.codebook_size, decay=config.ema_decay,
            commitment_weight=config.commitment_weight, kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.dead_code_threshold * batch_vectors / config.codebook_size,
            rotation_trick=False)  # the straight-through gradient of VQ-VAE, as UniVLA
        self.code_up = nn.Linear(config.code_dim, d)
        self.language = nn.Linear(text_dim, d) if language else None
        self.condition_enc = nn.Linear(config.code_dim, d) if conditioned else None
        self.condition_dec = nn.Linear(config.code_dim, d) if conditioned else None
        self.decoder = ForwardDynamics(config, num_patches, feature_dim, k * (2 if conditioned else 1))

    def forward(self, f_t: Tensor, f_tk: Tensor, text: Tensor | None = None,
                condition: Tensor | None = None) -> StageOutput:
        """text [B, text_dim] (stage 1), condition: stage-1 quantised latents [B, K, Z] (stage 2)."""
        empty = f_t.new_zeros(f_t.shape[0], 0, self.code_up.out_features)
        context = self.language(text)[:, None] if self.language is not None else empty
        enc_context, latents_extra = context, empty
        if self.condition_enc is not None:
            enc_context = torch.cat([context, self.condition_enc(condition)], dim=1)
            latents_extra = self.condition_dec(condition)
        quantized, codes, commitment = self.quantizer(self.encoder(f_t, f_tk, enc_context))
        latents = torch.cat([self.code_up(quantized), latents_extra], dim=1)
        return StageOutput(self.decoder(f_t, latents, context), codes, quantized, commitment.sum())


@dataclass
class LAMOutput:
    """The model on a batch of pairs: features of t and t + k [B, P, F] and each stage's output (stage 2: None when
    not run)."""

    f_t: Tensor
    f_tk: Tensor
    stage1: StageOutput
    stage2: StageOutput | None


# --- the model ---


class LatentActionModel(nn.Module):
    """Frames (t, t + k) + instruction -> K codes per stage; see the module docstring. `frame_gap`: k (resolved,
    >= 1). `info`: what was recorded at fit (data, history), saved in lam.json."""

    def __init__(self, config: LAMConfig, frame_gap: int):
        super().__init__()
        if frame_gap < 1:
            raise ValueError(f"frame_gap must be >= 1 (resolve lam.frame_gap=0 from the data's fps first); got "
                             f"{frame_gap}")
        self.config = dataclasses.replace(config, frame_gap=frame_gap)
        self.features = config.features.build(config.image_size)
        self.text = build_text_encoder(config.text, config.text_dim)
        p, f = self.features.num_patches, self.features.dim
        vectors = config.batch_size * config.tokens_per_frame
        self.stage1 = Stage(config, p, f, self.text.dim, language=True, conditioned=False, batch_vectors=vectors)
        self.stage2 = Stage(config, p, f, self.text.dim, language=False, conditioned=True, batch_vectors=vectors)
        self.info: dict[str, Any] = {}

    @property
    def frame_gap(self) -> int:
        return self.config.frame_gap

    @property
    def device(self) -> torch.device:
        return self.stage1.code_up.weight.device

    def init_stage2_from_stage1(self) -> None:
        """Stage 2's encoder and decoder start from stage 1's weights where names and shapes agree."""
        for source, target in ((self.stage1.encoder, self.stage2.encoder), (self.stage1.decoder, self.stage2.decoder)):
            own = target.state_dict()
            target.load_state_dict({k: v for k, v in source.state_dict().items()
                                    if k in own and own[k].shape == v.shape}, strict=False)

    def check_frames(self, frames: Tensor | np.ndarray, what: str) -> Tensor:
        """uint8 [B, S, S, 3] with S = image_size, on the model's device; a ValueError naming the size otherwise."""
        frames = torch.as_tensor(np.asarray(frames) if not isinstance(frames, Tensor) else frames)
        s = self.config.image_size
        if frames.dtype != torch.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != (s, s, 3):
            raise ValueError(f"{what}: frames are {frames.dtype} {list(frames.shape)}; the latent action model was "
                             f"fit on uint8 [B, {s}, {s}, 3] frames (image_size={s}): resize them to {s} x {s} (read "
                             f"the dataset with image_size={s})")
        return frames.to(self.device)

    def forward(self, frames_t: Tensor, frames_tk: Tensor, instructions: list[str], stage2: bool = True) -> LAMOutput:
        """Pairs (frames uint8 [B, S, S, 3], one instruction each) through stage 1 and, with `stage2`, stage 2.
        Stage 1 runs without gradients unless it is in training mode (it is frozen while stage 2 trains)."""
        f_t = self.features(self.check_frames(frames_t, "frames_t"))
        f_tk = self.features(self.check_frames(frames_tk, "frames_tk"))
        if f_t.shape[0] != f_tk.shape[0]:
            raise ValueError(f"frames_t has {f_t.shape[0]} frames, frames_tk {f_tk.shape[0]}; they are pairs")
        text = self.text(check_instructions(instructions, f_t.shape[0])).to(self.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage1.training):
            first = self.stage1(f_t, f_tk, text=text)
        second = self.stage2(f_t, f_tk, condition=first.quantized.detach()) if stage2 else None
        return LAMOutput(f_t, f_tk, first, second)

    @torch.no_grad()
    def encode_codes(self, frames_t: Tensor, frames_tk: Tensor, instructions: list[str]) -> Tensor:
        """The labels: stage-2 (task-centric) codes int64 [B, K] of pairs (frames uint8 [B, S, S, 3])."""
        was_training = self.training
        self.eval()
        try:
            return self(frames_t, frames_tk, instructions).stage2.codes.long().cpu()
        finally:
            self.train(was_training)

    # --- saving ---

    def trained_state(self) -> dict[str, Tensor]:
        """The saved weights: everything but the frozen feature and text models."""
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                if not k.startswith(FROZEN)}

    def fingerprint(self) -> str:
        """sha256 of the weights file `save` writes (of these weights)."""
        return hashlib.sha256(save(self.trained_state())).hexdigest()

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file(self.trained_state(), str(folder / WEIGHTS_FILE))
        meta = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(),
                "feature_space": self.features.fingerprint(), "text_embedding": self.text.fingerprint(),
                "num_patches": self.features.num_patches, "feature_dim": self.features.dim, **self.info}
        (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str = "cpu") -> LatentActionModel:
        """A saved model (eval mode); its feature space and text embedding are rebuilt from their sources and must
        be the ones it was fit with."""
        folder = Path(folder)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} is not a latent action model folder: no {name} (`vla-latent fit` "
                                        f"writes one)")
        meta = read_versioned_json(folder / CONFIG_FILE, FORMAT_VERSION)
        config = LAMConfig.from_dict(meta["config"])
        model = cls(config, config.frame_gap)
        check_same_space(folder, "feature space", meta["feature_space"], model.features.fingerprint(),
                         json.dumps(config.features.to_dict()))
        check_same_space(folder, "text embedding", meta["text_embedding"], model.text.fingerprint(), config.text)
        weights = load_file(str(folder / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith(FROZEN)]
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit its config: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")
        model.info = {k: v for k, v in meta.items() if k not in ("format_version", "config", "feature_space",
                                                                  "text_embedding", "num_patches", "feature_dim")}
        return model.to(device).eval()


def check_same_space(folder: Path, what: str, saved: str, now: str, source: str) -> None:
    if saved != now:
        raise ValueError(f"the latent action model in {folder} was fit in another {what} than {source} gives now "
                         f"(fingerprint {saved[:12]} at fit, {now[:12]} now): its codes would mean nothing here; "
                         f"load the {what} it was fit with, or fit a new latent action model (`vla-latent fit`)")


def file_fingerprint(folder: str | Path) -> str:
    """sha256 of a saved model's weights file (equals `LatentActionModel.fingerprint()` of the loaded model)."""
    return hashlib.sha256((Path(folder) / WEIGHTS_FILE).read_bytes()).hexdigest()
