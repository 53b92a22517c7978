"""What every head that writes tokens of the backbone LLM's vocabulary shares: reserved token slots, the state
token, teacher forcing, decoding over a persistent KV cache, and (for action tokenizers) chunks <-> ids.

Such a head has the backbone's own language model write a sequence of local ids after the observation prefix:

    [observation prefix: images, instruction, COG] [state token] s_0 s_1 ... s_{T-1} [END]

`VocabularyHead` is what every one of them shares (the `latent` head's ids are latent-action codes, with no
action tokenizer); `TokenHead` adds an action tokenizer (`vla/tokenizers`) whose ids encode the chunk (`ar`,
`hybrid`).

- Ids. Local ids are 0..num_slots-1; the head reserves `num_slots` tokens in the LLM's vocabulary. For a token head
  they are the tokenizer's upper bound on its vocabulary (`max_vocab_size`, known before it is
  fit, so a checkpoint's structure never depends on the fit), plus one end-of-action token (local id
  `max_vocab_size`) for tokenizers of variable length (FAST). Local id k is LLM id `action_ids[k]`:
  new rows appended after the text vocabulary (`vocabulary: new`, the default; they never collide with
  a text token) or the last ids of the text vocabulary (`vocabulary: reuse`, OpenVLA's scheme).
- Prefix. The observation prefix is the backbone's (images + instruction + cognition token), encoded
  once and read through its cached keys/values (`LanguagePrefix`). As dit / dita / flow do, the
  normalised state enters as one projected token after it (`use_proprio`); the first id is
  predicted at that token (or, without it, at the cognition token, the prefix's last position).
- Logits are the LM head's, restricted to the reserved tokens (and, for a token head, to the ids the fitted
  tokenizer has): training's cross-entropy and decoding both see only valid slots, so decoding cannot emit a
  text token.
- Decoding keeps one `Continuation`: each step appends one token, attending to the cached prefix and the
  tokens before it; `kv_cache=False` recomputes the whole suffix at every step instead (a reference).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn

from vla.action_heads.base import ActionHead, HeadConfig
from vla.backbones.continuation import Continuation, LanguagePrefix, Vocabulary
from vla.tokenizers import ActionTokenizer, BinsTokenizerConfig, TokenizerConfig
from vla.types import Cond

VOCABULARY_MODES = ("new", "reuse")


@dataclass
class VocabularyHeadConfig(HeadConfig, ABC):
    """Settings every head that writes tokens of the backbone LLM's vocabulary shares; not registered itself."""

    # new: tokens appended to the LLM's vocabulary; reuse: the last text token ids (OpenVLA)
    vocabulary: str = "new"
    use_proprio: bool = True  # a state token between the observation and the head's tokens
    temperature: float = 0.0  # decoding: 0 = greedy (argmax); > 0 samples from softmax(logits / temperature)

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError(f"head.horizon must be >= 1; got {self.horizon}")
        if self.vocabulary not in VOCABULARY_MODES:
            raise ValueError(f"head.vocabulary must be one of {VOCABULARY_MODES}; got {self.vocabulary!r}")
        if not self.temperature >= 0:
            raise ValueError(f"head.temperature must be >= 0 (0 = greedy); got {self.temperature}")

    @property
    def reads_language_cache(self) -> bool:
        return True

    @property
    def uses_vocabulary(self) -> bool:
        return True

    @property
    @abstractmethod
    def num_slots(self) -> int:
        """Tokens the head reserves in the LLM vocabulary (its local ids 0..num_slots-1)."""


@dataclass
class TokenHeadConfig(VocabularyHeadConfig):
    """Settings every head that predicts action-tokenizer ids shares; not registered itself."""

    # the action tokenizer (--model.head.tokenizer.type bins | fast, plus its own fields)
    tokenizer: TokenizerConfig = field(default_factory=BinsTokenizerConfig)
    # share of the training episodes held out of the tokenizer fit to report its round-trip error (training)
    tokenizer_holdout: float = 0.1
    # a tokenizer fit beforehand by `vla-tokenizer fit` (its output_dir or tokenizer folder), loaded by training
    # instead of fitting one on the training set; it must be of the `tokenizer` type with the same vocabulary
    tokenizer_path: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.tokenizer_holdout < 1:
            raise ValueError(f"head.tokenizer_holdout must be in [0, 1); got {self.tokenizer_holdout}")

    @property
    def tokenizer_config(self) -> TokenizerConfig:
        return self.tokenizer

    @property
    def num_slots(self) -> int:
        """Action tokens reserved in the LLM vocabulary: the tokenizer's ids (+ END when of variable length)."""
        return self.tokenizer.max_vocab_size + (0 if self.tokenizer.fixed_length else 1)


class VocabularyHead(ActionHead):
    """Base of heads whose backbone LLM writes tokens of its vocabulary after the observation (module docstring).

    Subclasses use `logits` / `hidden_states` (teacher forcing) and `decode_ids` (decoding), and define
    `max_tokens` (the longest sequence decoding runs). `valid_slots` may forbid some local ids (a token head: the
    ids its fitted tokenizer lacks); `end_id`, when set, is a local id that ends a sequence. A subclass that needs
    special tokens of its own (hybrid's diffusion-span markers) sets `marker_tokens`: they are reserved in the same
    `add_action_tokens` call, after the head's slots (one call per backbone), and are never decoded.
    """

    marker_tokens = 0  # special tokens reserved after the slots; their LLM ids are `marker_ids`
    end_id: int | None = None  # local id ending a sequence (decoding stops at it); None: fixed length
    # at temperature 0 every sample of an observation is the same chunk (hybrid: no, its diffusion noise differs)
    deterministic_when_greedy: ClassVar[bool] = True

    def __init__(self, config: VocabularyHeadConfig, cond_dim: int, action_dim: int, state_dim: int, backbone):
        super().__init__(config, action_dim)
        self.config: VocabularyHeadConfig = config
        self.num_slots = config.num_slots
        ids = backbone.add_action_tokens(self.num_slots + self.marker_tokens,
                                         reuse_text_tokens=config.vocabulary == "reuse").long()
        # derived from the config and the backbone's text vocabulary, so not saved
        self.register_buffer("action_ids", ids[:self.num_slots], persistent=False)  # (num_slots,) LLM id per local id
        self.register_buffer("marker_ids", ids[self.num_slots:], persistent=False)  # (marker_tokens,)
        self.state_proj = nn.Linear(state_dim, cond_dim) if config.use_proprio else None

    def valid_slots(self, device: torch.device) -> Tensor:
        """bool [num_slots]: the local ids decoding may emit (every slot unless a subclass narrows it)."""
        return torch.ones(self.num_slots, dtype=torch.bool, device=device)

    @property
    @abstractmethod
    def max_tokens(self) -> int:
        """The longest id sequence decoding runs."""

    # ---- running the LLM -----------------------------------------------------------------------------

    def prefix(self, cond: Cond) -> tuple[LanguagePrefix, Vocabulary]:
        cached = cond.backbone.past_key_values
        if cached is None or getattr(cached, "vocabulary", None) is None:
            raise ValueError(f"the {self.config.type} head continues the backbone's LLM after its prefix and needs "
                             f"its prefix cache and LM head: call the backbone (built with lm_head=True) with "
                             f"keep_cache=True (VLAPolicy does both)")
        return cached, cached.vocabulary

    def start(self, cond: Cond, scratch: bool = False) -> tuple[Continuation, Tensor]:
        """(a fresh continuation after the prefix [with the state token], the hidden state [B, C] at which the
        first token is predicted). scratch: the prefix's scratch continuation (rewound; without autograd its
        buffers are reused, so it is valid until the next scratch call), e.g. for one more pass after decoding."""
        prefix, _ = self.prefix(cond)
        continuation = prefix.scratch_continuation() if scratch else prefix.continuation()
        if self.state_proj is None:
            return continuation, cond.backbone.cognition
        state = self.state_proj(cond.proprio.to(self.state_proj.weight.dtype))[:, None]  # (B, 1, C)
        return continuation, continuation.append(state * prefix.input_scale)[:, -1]

    def slot_logits(self, vocabulary: Vocabulary, hidden: Tensor) -> Tensor:
        """Logits [..., num_slots] (float) over the head's tokens of hidden states [..., C]; -inf at the local ids
        decoding may not emit (`valid_slots`: for a token head, the ids the fitted tokenizer lacks)."""
        logits = vocabulary.logits(hidden, self.action_ids).float()
        return logits.masked_fill(~self.valid_slots(logits.device), float("-inf"))

    def block_cache(self, num_steps: int | None, bac: bool) -> None:
        """No block caching: the LLM's own layers run the head's tokens (None, or a ValueError when bac is asked)."""
        if bac:
            raise ValueError(f"BAC caches a denoiser's blocks between denoising steps; the {self.config.type} head "
                             f"runs its tokens through the backbone's LLM and has none (sample with bac=False, "
                             f"evaluate with --bac false)")
        return None

    def hidden_states(self, cond: Cond, ids: Tensor, opened: tuple[Continuation, Tensor] | None = None) -> Tensor:
        """Teacher forcing: last-layer hidden states [B, 1 + T, C], first where the first id is predicted, then at
        each of the local ids [B, T] appended in one pass over the suffix. opened: (continuation, hidden [B, C]
        predicting the first id) to continue from; default `start(cond)`."""
        _, vocabulary = self.prefix(cond)
        continuation, first = opened if opened is not None else self.start(cond)
        hidden = first[:, None]  # (B, 1, C)
        if ids.shape[1] > 0:
            inputs = vocabulary.embed(self.action_ids[ids])  # (B, T, C)
            hidden = torch.cat([hidden, continuation.append(inputs).to(hidden.dtype)], dim=1)
        return hidden

    def logits(self, cond: Cond, ids: Tensor, opened: tuple[Continuation, Tensor] | None = None) -> Tensor:
        """Teacher forcing: logits [B, T, num_slots] predicting each of the local ids [B, T] from those before it,
        in one pass over the suffix (`hidden_states` of all but the last id)."""
        _, vocabulary = self.prefix(cond)
        return self.slot_logits(vocabulary, self.hidden_states(cond, ids[:, :-1], opened))

    @torch.no_grad()
    def decode_ids(self, cond: Cond, generator: torch.Generator | None = None, temperature: float = 0.0,
                   kv_cache: bool = True, opener: Callable[[], tuple[Continuation, Tensor]] | None = None
                   ) -> tuple[Tensor, Tensor]:
        """Decode local ids [B, T] and each chosen token's probability [B, T] (T <= max_tokens; after a row's END,
        END repeats with probability 1).

        temperature 0: greedy; > 0: sample from softmax(logits / temperature) with `generator`. kv_cache=False
        reruns the whole suffix at every step (a reference for tests and latency comparisons). opener: returns a
        fresh (continuation, hidden [B, C] predicting the first id) for the tokens to follow; default
        `start(cond)` (hybrid opens after its diffusion span)."""
        _, vocabulary = self.prefix(cond)
        opener = opener or (lambda: self.start(cond))
        continuation, hidden = opener()
        ids, probs = [], []
        done = torch.zeros(hidden.shape[0], dtype=torch.bool, device=hidden.device)
        for step in range(self.max_tokens):
            logits = self.slot_logits(vocabulary, hidden)  # (B, num_slots)
            token, prob = self._choose(logits, temperature, generator)
            if self.end_id is not None:
                token = torch.where(done, torch.full_like(token, self.end_id), token)
                prob = torch.where(done, torch.ones_like(prob), prob)
                done = done | (token == self.end_id)
            ids.append(token)
            probs.append(prob)
            if done.all() or step == self.max_tokens - 1:
                break
            if kv_cache:
                hidden = continuation.append(vocabulary.embed(self.action_ids[token])[:, None])[:, -1]
            else:  # the whole suffix again, from a fresh continuation
                continuation, _ = opener()
                hidden = continuation.append(vocabulary.embed(self.action_ids[torch.stack(ids, 1)]))[:, -1]
        return torch.stack(ids, 1), torch.stack(probs, 1)

    @staticmethod
    def _choose(logits: Tensor, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(token [B], its probability under softmax(logits) [B]) by argmax or by sampling."""
        probs = logits.softmax(-1)
        if temperature == 0:
            token = logits.argmax(-1)
        else:
            scaled = (logits / temperature).softmax(-1)
            device = generator.device if generator is not None else scaled.device
            token = torch.multinomial(scaled.to(device), 1, generator=generator)[:, 0].to(logits.device)
        return token, probs.gather(1, token[:, None])[:, 0]


class TokenHead(VocabularyHead):
    """Base of heads whose backbone LLM writes action-tokenizer ids (see the module docstring).

    Subclasses use `targets` (chunks -> local ids), `logits` (teacher forcing), `decode_ids` (decoding)
    and `ids_to_chunks`.
    """

    def __init__(self, config: TokenHeadConfig, cond_dim: int, action_dim: int, state_dim: int, backbone):
        super().__init__(config, cond_dim, action_dim, state_dim, backbone)
        self.config: TokenHeadConfig = config
        self.end_id = None if config.tokenizer.fixed_length else config.tokenizer.max_vocab_size
        self._tokenizer: ActionTokenizer | None = None

    # ---- the tokenizer -------------------------------------------------------------------------------

    @property
    def action_tokenizer(self) -> ActionTokenizer | None:
        return self._tokenizer

    def set_action_tokenizer(self, tokenizer: ActionTokenizer) -> None:
        """Attach a fitted tokenizer; a ValueError unless it is of the configured type with the same vocabulary
        bound and length rule (the head's structure; fit settings such as a VQ's training steps may differ),
        fit for this horizon, at most this action width, and within the reserved vocabulary."""
        kind, mine, theirs = self.config.tokenizer.type, self.config.tokenizer, tokenizer.config
        if not tokenizer.is_fit:
            raise ValueError(f"the {self.config.type} head needs a fitted {kind} tokenizer; call fit(chunks) first")
        if (theirs.type, theirs.max_vocab_size, theirs.fixed_length) != (kind, mine.max_vocab_size, mine.fixed_length):
            raise ValueError(f"the {self.config.type} head is configured for a {kind} tokenizer of at most "
                             f"{mine.max_vocab_size} ids ({mine}); got a {theirs.type} tokenizer of at most "
                             f"{theirs.max_vocab_size} ids ({theirs}): set model.head.tokenizer to match it")
        if tokenizer.horizon != self.config.horizon or tokenizer.action_dim > self.action_dim:
            raise ValueError(f"the {kind} tokenizer was fit for chunks of H={tokenizer.horizon}, D="
                             f"{tokenizer.action_dim}; this head predicts H={self.config.horizon} actions of at most "
                             f"{self.action_dim} dims (head.horizon, model.max_action_dim)")
        if tokenizer.vocab_size > self.config.tokenizer.max_vocab_size:
            raise ValueError(f"the {kind} tokenizer has {tokenizer.vocab_size} ids; the head reserved "
                             f"{self.config.tokenizer.max_vocab_size}")
        self._tokenizer = tokenizer

    def require_tokenizer(self) -> ActionTokenizer:
        if self._tokenizer is None:
            raise RuntimeError(f"the {self.config.type} head has no fitted action tokenizer: vla-train fits one before "
                               f"training, a checkpoint loads its action_tokenizer/ folder, or attach one with "
                               f"head.set_action_tokenizer(tokenizer)")
        return self._tokenizer

    def valid_slots(self, device: torch.device) -> Tensor:
        """bool [num_slots]: the local ids decoding may emit (the fitted vocabulary, and END if any)."""
        slots = torch.arange(self.num_slots, device=device)
        valid = slots < self.require_tokenizer().vocab_size
        return valid | (slots == self.end_id) if self.end_id is not None else valid

    @property
    def max_tokens(self) -> int:
        """The longest id sequence decoding runs: the tokenizer's bound per chunk (+ END)."""
        return self.require_tokenizer().max_tokens_per_chunk + (self.end_id is not None)

    # ---- chunks <-> ids ------------------------------------------------------------------------------

    def targets(self, actions: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised padded chunks [B, H, D_max] -> (local ids [B, T] long, real bool [B, T]), END appended for
        variable-length tokenizers, right-padded with END (or 0) where real is False.

        The tokenizer sees the first D dims it was fit for (the others must be padding: valid [B, H, D_max]);
        steps past the episode end (valid False) repeat the last real step, as LeRobot pads them, so what
        the padded entries hold never reaches the loss.
        """
        tokenizer = self.require_tokenizer()
        dim = tokenizer.action_dim
        real_dims = valid.any(1)  # (B, D_max)
        if real_dims[:, dim:].any() or not real_dims[:, :dim].all():
            raise ValueError(f"the {tokenizer.config.type} tokenizer was fit on {dim} action dims; this batch has "
                             f"{sorted(set(real_dims.sum(1).tolist()))} real dims per sample")
        steps = valid[:, :, :dim].all(-1)  # (B, H)
        last = (steps.long() * torch.arange(steps.shape[1], device=steps.device)).argmax(1)  # last real step
        hold = torch.where(steps, torch.arange(steps.shape[1], device=steps.device), last[:, None])
        chunks = actions[:, :, :dim].gather(1, hold[:, :, None].expand(-1, -1, dim))  # (B, H, dim)
        seqs = tokenizer.encode(chunks.detach().float().cpu().numpy())
        if self.end_id is not None:
            seqs = [seq + [self.end_id] for seq in seqs]
        length = max(len(seq) for seq in seqs)
        ids = torch.full((len(seqs), length), self.end_id if self.end_id is not None else 0, dtype=torch.long)
        real = torch.zeros(len(seqs), length, dtype=torch.bool)
        for row, seq in enumerate(seqs):
            ids[row, :len(seq)] = torch.tensor(seq, dtype=torch.long)
            real[row, :len(seq)] = True
        return ids.to(actions.device), real.to(actions.device)

    def ids_to_chunks(self, ids: Tensor) -> Tensor:
        """Local ids [B, T] (cut at the first END) -> normalised chunks [B, H, D_max] (zero in padded dims,
        clipped to `action_clip`)."""
        tokenizer = self.require_tokenizer()
        seqs = []
        for row in ids.tolist():
            seqs.append(row[:row.index(self.end_id)] if self.end_id in row else row)
        chunks = torch.from_numpy(tokenizer.decode(seqs)).to(ids.device)  # (B, H, dim)
        out = chunks.new_zeros(len(seqs), self.config.horizon, self.action_dim)
        out[:, :, :tokenizer.action_dim] = chunks
        return out if self.action_clip is None else out.clamp(-self.action_clip, self.action_clip)
