"""VQ-VLA: a causal-convolution residual-VQ autoencoder over action chunks (Wang et al., ICCV 2025,
"VQ-VLA: Improving Vision-Language-Action Models via Scaling Vector-Quantized Action Tokenizers",
arXiv 2507.01016; see shared METHODS.md section 4).

Encoder: causal 1-D convolutions over the chunk's time axis, then a strided convolution that turns
every `downsample` steps into one latent step: [B, H, D] -> [B, T', code_dim], T' = ceil(H / downsample)
(a horizon that is not a multiple is padded at the end by repeating the last action, so latent t only
sees steps up to (t + 1) * downsample - 1). Residual VQ with `levels` codebooks of `codebook_size` codes
quantises each latent step (r_1 = z; q_l = nearest code of level l to r_l; r_{l+1} = r_l - q_l; z_q =
sum of q_l); codebooks follow their assigned encoder outputs by EMA (`ema_decay`), and a code whose EMA
usage falls below `dead_code_threshold` of its uniform share is restarted at a random encoder output of
the batch. The decoder mirrors the encoder (transposed strided convolution, causal convolutions) back
to [B, H, D]. Loss: MSE(reconstruction, chunk) + commitment_weight * mean over levels of
||r_l - sg(q_l)||^2 (the paper weights the commitment by 5).

Tokens: per latent step `levels` ids, step-major and level-minor ([step 0: level 0..L-1, step 1: ...]),
so T' * levels ids per chunk, always. Level l's code k has id l * codebook_size + k (vocab = levels *
codebook_size), so an id says which level it belongs to and a model learns one embedding per
(level, code); a token head may restrict position p to level p % levels's ids.

The quantiser is `vector_quantize_pytorch.ResidualVQ` (the library the paper's code uses), pinned in
pyproject.toml. Deviations from the paper: the action window is a 1-D sequence over time with D input
channels (the paper treats it as a 1-channel 2-D image [n, d]); normalisation is per step over channels
(the paper's GroupNorm also mixes time steps, which would break causality); no Fourier time or per-column
type embeddings; codebooks start from k-means on the first batch as in the paper (`kmeans_init`).

Defaults are sized for a CPU (about ten seconds): hidden 64, code_dim 32, 300 steps of 128 chunks. On
2,000 random-sinusoid H=8, D=4 chunks, 1,500 steps of 256 gave a held-out mean absolute error of 0.049 with 8
ids per chunk (vs 0.073 after 300 steps of 128; normalised units). The paper's scale is
hidden 128-512 over 4 stages, code_dim 128, 4 levels x 256 codes, window 5 -> 1 latent step
(downsample=5), trained on millions of real and synthetic chunks on a GPU (device="cuda").
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vla.tokenizers.base import ActionTokenizer, TokenizerConfig, register_tokenizer

log = logging.getLogger(__name__)

WEIGHTS_FILE = "vq_weights.safetensors"
ENCODE_BATCH = 4096  # chunks per forward pass in encode / decode / statistics (bounds memory)
KMEANS_INIT_CHUNKS = 4096  # chunks the first batch (k-means initialisation of the codebooks) draws


@dataclass
class VQTokenizerConfig(TokenizerConfig):
    levels: int = 4  # residual quantisers: ids per latent step (paper: 4)
    codebook_size: int = 256  # codes per level (paper: 256)
    downsample: int = 4  # action steps per latent step: T' = ceil(H / downsample) (paper: 5 = its whole window)
    hidden: int = 64  # convolution channels (paper: 128-512)
    code_dim: int = 32  # latent / code vector size (paper: 128)
    depth: int = 1  # residual causal-conv blocks before and after the down- / upsampling
    kernel_size: int = 3  # causal convolution width over time
    ema_decay: float = 0.8  # codebook EMA decay (vector-quantize-pytorch's default, which the paper keeps)
    commitment_weight: float = 5.0  # paper: MSE + 5 * commitment
    # a code whose EMA count of assigned vectors per batch falls below this fraction of the uniform share
    # (batch_size * T' / codebook_size) is restarted at a random encoder output; 0 = never restart
    dead_code_threshold: float = 0.1
    kmeans_init: bool = True  # codebooks start from k-means on the first batch (paper); else uniform random
    steps: int = 300  # optimiser steps of the autoencoder fit (CPU-sized; thousands for a real tokenizer)
    batch_size: int = 128  # chunks per step
    lr: float = 2e-3  # AdamW, cosine-decayed to lr / 10
    seed: int = 0  # weights, batches, k-means and restarts; the same seed and data give the same tokenizer
    device: str = "cpu"  # where fit trains ("cuda" for paper-sized fits, then not bit-reproducible); load is CPU
    log_every: int = 100  # steps between recorded training losses

    def __post_init__(self) -> None:
        for name in ("levels", "downsample", "hidden", "code_dim", "kernel_size", "steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"tokenizer.{name} must be >= 1; got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ValueError(f"tokenizer.codebook_size must be >= 2; got {self.codebook_size}")
        if self.depth < 0:
            raise ValueError(f"tokenizer.depth must be >= 0; got {self.depth}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"tokenizer.ema_decay must be in (0, 1); got {self.ema_decay}")
        if self.commitment_weight < 0 or self.dead_code_threshold < 0 or not self.lr > 0:
            raise ValueError(f"tokenizer.commitment_weight and dead_code_threshold must be >= 0 and lr > 0; got "
                             f"commitment_weight={self.commitment_weight}, dead_code_threshold="
                             f"{self.dead_code_threshold}, lr={self.lr}")

    @property
    def max_vocab_size(self) -> int:
        return self.levels * self.codebook_size  # known before the fit: ids are offset per level

    @property
    def fixed_length(self) -> bool:
        return True  # T' * levels ids per chunk

    def latent_steps(self, horizon: int) -> int:
        """T' for chunks of H steps."""
        return math.ceil(horizon / self.downsample)


# --- the autoencoder ---


class CausalConv1d(nn.Conv1d):
    """A convolution over time [B, C, T] -> [B, C', T] whose output at t sees inputs <= t (left zero-padding)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, (self.kernel_size[0] - 1, 0)))


class StepNorm(nn.LayerNorm):
    """LayerNorm over channels at each time step of [B, C, T]; unlike GroupNorm it mixes no time steps."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class CausalResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))) with causal convolutions; [B, C, T] -> [B, C, T]."""

    def __init__(self, channels: int, kernel_size: int):
        super().__init__()
        self.net = nn.Sequential(StepNorm(channels), nn.SiLU(), CausalConv1d(channels, channels, kernel_size),
                                 StepNorm(channels), nn.SiLU(), CausalConv1d(channels, channels, kernel_size))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ConvRVQ(nn.Module):
    """Causal-conv encoder, residual VQ and causal-conv decoder for chunks [B, H, D]."""

    def __init__(self, config: VQTokenizerConfig, horizon: int, action_dim: int, batch_vectors: int):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ  # imported here: it takes about a second (einx)

        c, k, ds = config.hidden, config.kernel_size, config.downsample
        self.horizon, self.downsample = horizon, ds
        self.latent_steps = config.latent_steps(horizon)

        def blocks() -> list[nn.Module]:
            return [CausalResBlock(c, k) for _ in range(config.depth)]

        self.encoder = nn.Sequential(
            CausalConv1d(action_dim, c, k), *blocks(),
            nn.Conv1d(c, c, kernel_size=ds, stride=ds),  # latent t <- steps [t*ds, (t+1)*ds): causal
            *blocks(), StepNorm(c), nn.SiLU(), nn.Conv1d(c, config.code_dim, 1))
        self.decoder = nn.Sequential(
            nn.Conv1d(config.code_dim, c, 1), *blocks(),
            nn.ConvTranspose1d(c, c, kernel_size=ds, stride=ds),  # latent t -> steps [t*ds, (t+1)*ds)
            *blocks(), StepNorm(c), nn.SiLU(), CausalConv1d(c, action_dim, k))
        # the library counts a code's usage in vectors per batch; the threshold is a share of the uniform count
        threshold = config.dead_code_threshold * batch_vectors / config.codebook_size
        self.quantizer = ResidualVQ(
            dim=config.code_dim, num_quantizers=config.levels, codebook_size=config.codebook_size,
            decay=config.ema_decay, commitment_weight=config.commitment_weight, kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=threshold,
            rotation_trick=False)  # the straight-through gradient of VQ-VAE, as in the paper

    def encode(self, chunks: Tensor) -> Tensor:
        """Chunks [B, H, D] -> latents [B, T', code_dim] (before quantisation)."""
        x = chunks.transpose(1, 2)  # (B, D, H)
        pad = self.latent_steps * self.downsample - self.horizon
        if pad:  # repeat the last action; the padded steps come after every real one, so causality holds
            x = F.pad(x, (0, pad), mode="replicate")  # (B, D, T' * downsample)
        return self.encoder(x).transpose(1, 2)  # (B, T', code_dim)

    def decode(self, latents: Tensor) -> Tensor:
        """Quantised latents [B, T', code_dim] -> chunks [B, H, D]."""
        return self.decoder(latents.transpose(1, 2))[:, :, : self.horizon].transpose(1, 2)

    def quantize(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Latents [B, T', code_dim] -> (quantised [B, T', code_dim], codes [B, T', L], commitment losses [L])."""
        quantized, codes, losses = self.quantizer(latents)
        return quantized, codes, losses.reshape(-1, losses.shape[-1]).mean(0)

    def dequantize(self, codes: Tensor) -> Tensor:
        """Codes [B, T', L] (-1 = no code at that level) -> quantised latents [B, T', code_dim]."""
        return self.quantizer.get_output_from_indices(codes)

    def forward(self, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Chunks [B, H, D] -> (reconstruction [B, H, D], codes [B, T', L], commitment losses [L])."""
        quantized, codes, losses = self.quantize(self.encode(chunks))
        return self.decode(quantized), codes, losses


# --- fitting ---


def train_autoencoder(model: ConvRVQ, chunks: Tensor, config: VQTokenizerConfig,
                      generator: torch.Generator) -> list[dict[str, float]]:
    """Fit `model` on normalised chunks [N, H, D] (on the model's device); returns the loss history
    ({"step", "recon_mse", "commitment"} averaged over each `log_every` steps)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps, eta_min=config.lr / 10)
    model.train()
    with torch.no_grad():  # the first batch initialises the codebooks (k-means) from many encoder outputs
        model(chunks[torch.randperm(len(chunks), generator=generator)[:KMEANS_INIT_CHUNKS].to(chunks.device)])
    history, recon_sum, commit_sum = [], 0.0, 0.0
    for step in range(1, config.steps + 1):
        batch = chunks[torch.randint(len(chunks), (config.batch_size,), generator=generator).to(chunks.device)]
        recon, _, commitment = model(batch)
        recon_loss, commit_loss = F.mse_loss(recon, batch), commitment.mean()
        optimizer.zero_grad(set_to_none=True)
        (recon_loss + commit_loss).backward()
        optimizer.step()
        schedule.step()
        recon_sum, commit_sum = recon_sum + recon_loss.item(), commit_sum + commit_loss.item()
        if step % config.log_every == 0 or step == config.steps:
            n = step - (history[-1]["step"] if history else 0)
            history.append({"step": step, "recon_mse": recon_sum / n, "commitment": commit_sum / n})
            log.info("vq fit step %d/%d: recon mse %.5f, commitment %.5f", step, config.steps,
                     recon_sum / n, commit_sum / n)
            recon_sum, commit_sum = 0.0, 0.0
    model.eval()
    return history


def codebook_statistics(codes: np.ndarray, codebook_size: int) -> dict[str, list[float]]:
    """Codes [N, T', L] -> per level: usage (share of the codebook used at least once) and perplexity
    (exp of the entropy of the code frequencies: codebook_size when all are used equally, 1 for one code)."""
    usage, perplexity = [], []
    for level in range(codes.shape[-1]):
        counts = np.bincount(codes[..., level].ravel(), minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        usage.append(float((counts > 0).mean()))
        perplexity.append(float(np.exp(-(p * np.log(p)).sum())))
    return {"codebook_usage": usage, "perplexity": perplexity}


# --- the tokenizer ---


class VQTokenizer(ActionTokenizer):
    """Chunks [B, H, D] <-> T' * levels residual-VQ ids per chunk (step-major, level-minor, offset per level)."""

    config: VQTokenizerConfig
    files = (WEIGHTS_FILE,)

    def __init__(self, config: VQTokenizerConfig):
        super().__init__(config)
        self.model: ConvRVQ | None = None
        self.fit_report: dict[str, Any] = {}  # loss history, reconstruction error and codebook use on the fit data

    @property
    def vocab_size(self) -> int:
        return self.config.max_vocab_size

    @property
    def latent_steps(self) -> int:
        self._require_fit("latent_steps")
        return self.config.latent_steps(self.horizon)

    @property
    def max_tokens_per_chunk(self) -> int:
        return self.latent_steps * self.config.levels

    def codes(self, chunks: np.ndarray) -> np.ndarray:
        """Normalised chunks [B, H, D] -> codes [B, T', L] int64 (per level, 0..codebook_size-1)."""
        chunks = self._check_chunks(chunks, "codes")
        with torch.no_grad():
            parts = [self.model.quantize(self.model.encode(torch.from_numpy(part).float()))[1]
                     for part in np.array_split(chunks, max(1, math.ceil(len(chunks) / ENCODE_BATCH)))]
        return torch.cat(parts).numpy().astype(np.int64)

    def diagnostics(self, chunks: np.ndarray) -> dict[str, Any]:
        """Codebook usage and perplexity per level on chunks [N, H, D] (e.g. held out)."""
        return codebook_statistics(self.codes(chunks), self.config.codebook_size)

    def _fit(self, chunks: np.ndarray) -> None:
        cfg, device = self.config, torch.device(self.config.device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(cfg.seed)  # weights; the library's k-means and restarts draw from the global RNG
            batch_vectors = cfg.batch_size * cfg.latent_steps(self.horizon)
            self.model = ConvRVQ(cfg, self.horizon, self.action_dim, batch_vectors).to(device)
            generator = torch.Generator().manual_seed(cfg.seed)  # batches
            history = train_autoencoder(self.model, torch.from_numpy(chunks).float().to(device), cfg, generator)
        self.model.cpu()
        codes = self.codes(chunks)
        recon = self._decode_codes(codes)
        self.fit_report = {"history": history, "recon_mean_abs_error": float(np.abs(recon - chunks).mean()),
                           **codebook_statistics(codes, cfg.codebook_size)}
        log.info("vq fit: mean abs reconstruction error %.4f, codebook usage %s, perplexity %s",
                 self.fit_report["recon_mean_abs_error"], _rounded(self.fit_report["codebook_usage"]),
                 _rounded(self.fit_report["perplexity"]))

    def _encode(self, chunks: np.ndarray) -> list[list[int]]:
        codes = self.codes(chunks)  # (B, T', L)
        ids = codes + np.arange(self.config.levels) * self.config.codebook_size  # offset per level
        return ids.reshape(len(chunks), -1).tolist()  # (B, T'*L), step-major

    def _decode(self, tokens: list[list[int]]) -> np.ndarray:
        """An id is read at its position's level as id % codebook_size (so an id of another level still
        names a code); ids outside 0..vocab_size-1 and missing positions add no code at their level;
        extra ids are dropped."""
        size = self.max_tokens_per_chunk
        ids = np.full((len(tokens), size), -1, dtype=np.int64)  # -1: no code
        for row, seq in zip(ids, tokens, strict=True):
            seq = np.array(seq[:size], dtype=np.int64)
            row[: len(seq)] = np.where((seq >= 0) & (seq < self.vocab_size), seq % self.config.codebook_size, -1)
        return self._decode_codes(ids.reshape(len(tokens), self.latent_steps, self.config.levels))

    def _decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, T', L] (-1 = none) -> chunks [B, H, D] float64."""
        with torch.no_grad():
            parts = [self.model.decode(self.model.dequantize(torch.from_numpy(part)))
                     for part in np.array_split(codes, max(1, math.ceil(len(codes) / ENCODE_BATCH)))]
        return torch.cat(parts).double().numpy()

    def _state(self) -> dict[str, Any]:
        return {"fit_report": self.fit_report}

    def _save_files(self, folder: Path) -> None:
        from safetensors.torch import save_model

        save_model(self.model, str(folder / WEIGHTS_FILE))

    def _load_state(self, state: dict[str, Any], folder: Path) -> None:
        from safetensors.torch import load_model

        cfg = self.config
        self.fit_report = state.get("fit_report", {})
        with torch.random.fork_rng(devices=[]):  # building the model draws initial weights: keep the caller's RNG
            self.model = ConvRVQ(cfg, self.horizon, self.action_dim, cfg.batch_size * self.latent_steps)
        try:
            missing, unexpected = load_model(self.model, str(folder / WEIGHTS_FILE), strict=False)
        except RuntimeError as e:  # shape mismatch
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit a vq tokenizer with this config "
                             f"(H={self.horizon}, D={self.action_dim}): {e}") from e
        if missing or unexpected:
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit a vq tokenizer with this config: missing "
                             f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
        self.model.eval()


def _rounded(values: list[float]) -> list[float]:
    return [round(v, 3) for v in values]


VQTokenizerConfig.tokenizer_class = VQTokenizer
register_tokenizer("vq")(VQTokenizerConfig)
