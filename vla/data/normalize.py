"""Per-embodiment normalisation of actions and proprio state into one padded space.

Heads work on actions normalised per embodiment and zero-padded to `max_action_dim`, so
robots with different action spaces share one network. The statistics travel with the
checkpoint as JSON; a robot without statistics is an error, never a silent default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from vla.data.embodiment import EmbodimentInfo

if TYPE_CHECKING:
    from vla.data.dataset import ChunkedDemos
    from vla.data.registry import Embodiment

Mode = Literal["quantile", "zscore"]
MODES = ("quantile", "zscore")
# a dimension is normalised with the policy's mode or passed through unchanged ("none": e.g. a 0/1 gripper)
PASS = "none"
KINDS = ("action", "state")
STAT_NAMES = ("mean", "std", "min", "max", "q01", "q99")
# Dimensions whose spread is below this are constant in the data (e.g. an always-zero goal
# slot); they normalise to 0 and unnormalise to their centre instead of dividing by ~0.
EPS = 1e-6


def compute_stats(x: Tensor) -> dict[str, list[float]]:
    """mean, std, min, max, q01, q99 per dimension of x [N, D] (each a list of D floats)."""
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"compute_stats needs a non-empty [N, D] tensor; got shape {list(x.shape)}")
    x = x.double()
    q = torch.quantile(x, torch.tensor([0.01, 0.99], dtype=x.dtype), dim=0)
    values = {"mean": x.mean(0), "std": x.std(0, unbiased=False), "min": x.min(0).values,
              "max": x.max(0).values, "q01": q[0], "q99": q[1]}
    return {k: v.tolist() for k, v in values.items()}


@dataclass
class Normalizer:
    """Maps actions / state of each embodiment to and from a normalised, zero-padded space.

    stats: embodiment -> {"action": compute_stats(...), "state": compute_stats(...)}.
    mode: "quantile" maps [q01, q99] to [-1, 1] (actions are then clipped to [-1, 1], the
        range diffusion schedulers clip samples to; state is not clipped); "zscore" uses
        (x - mean) / std and clips nothing.
    modes: embodiment -> {"action": [D modes], "state": [S modes]}, each `mode` or "none" (the value passes
        through unchanged, never clipped); an embodiment not listed uses `mode` for every dimension (so files
        written before per-dimension modes load and normalise as they did).
    """

    stats: dict[str, dict[str, dict[str, list[float]]]]
    mode: Mode
    max_action_dim: int
    max_state_dim: int
    # embodiment -> the training data's action / state names, action kind and fps (what deploy checks an arm
    # against); empty in normalisers built by hand
    info: dict[str, EmbodimentInfo] = field(default_factory=dict)
    modes: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normalisation mode must be one of {MODES}; got {self.mode!r}")
        for embodiment in self.stats:
            for kind, max_dim in (("action", self.max_action_dim), ("state", self.max_state_dim)):
                dim = self._dim(embodiment, kind)
                if dim > max_dim:
                    raise ValueError(f"{embodiment!r} {kind} dim {dim} > max_{kind}_dim {max_dim}")
        for embodiment, kinds in self.modes.items():
            if embodiment not in self.stats:
                raise ValueError(f"normalisation modes for {embodiment!r}, which has no statistics")
            for kind, modes in kinds.items():
                dim = self._dim(embodiment, kind) if kind in KINDS else -1
                if len(modes) != dim or not set(modes) <= {self.mode, PASS}:
                    raise ValueError(f"{embodiment!r} {kind} modes {modes}: expected {dim} of {self.mode!r} / "
                                     f"{PASS!r} (the policy's mode, or passed through)")

    @classmethod
    def from_demos(cls, demos: ChunkedDemos, mode: Mode = "quantile", max_action_dim: int | None = None,
                   max_state_dim: int | None = None) -> Normalizer:
        """Statistics of one dataset (any frame source): actions over every frame's own action, state over every
        frame; max dims default to the dataset's widths. Action-free data has none to compute (a ValueError)."""
        if not has_actions(demos):
            raise ValueError(f"dataset of {demos.embodiment!r} has no actions (action-free data): there are no "
                             f"action statistics to compute; normalise with a dataset that has actions")
        columns = demos.numeric()
        return cls.from_sources([demos], mode, max_action_dim or columns["action"].shape[-1],
                                max_state_dim or columns["state"].shape[-1])

    @classmethod
    def from_sources(cls, sources: list, mode: Mode, max_action_dim: int, max_state_dim: int) -> Normalizer:
        """Statistics per embodiment over every source of it (frame sources with `numeric()`, `embodiment`, `info`:
        vla.data.mixture): two datasets of one robot share statistics; sources of one embodiment that disagree on
        its names, kind, fps or per-dimension modes are an error. The modes come from each source's registry
        entry (`entry`; `mode` everywhere without one): see `entry_modes`. Action-free sources (`has_actions`
        False) are skipped: their samples are never normalised (vla.data.transforms), so an embodiment with only
        action-free data gets no statistics."""
        stats, info, modes = {}, {}, {}
        sources = [s for s in sources if has_actions(s)]
        for name in dict.fromkeys(s.embodiment for s in sources):
            own = [s for s in sources if s.embodiment == name]
            described = {json.dumps(s.info.to_dict(), sort_keys=True) for s in own}
            if len(described) > 1:
                raise ValueError(f"datasets of embodiment {name!r} describe it differently: {sorted(described)}; "
                                 f"give them different embodiment names or fix their registry entries")
            columns = [s.numeric() for s in own]
            stats[name] = {kind: compute_stats(torch.from_numpy(np.concatenate([c[kind] for c in columns])))
                           for kind in ("action", "state")}
            info[name] = own[0].info
            asked = {json.dumps(source_modes(s, mode)) for s in own}
            if len(asked) > 1:
                raise ValueError(f"datasets of embodiment {name!r} normalise it differently: {sorted(asked)}; give "
                                 f"them different embodiment names or the same normalization in their entries")
            own_modes = source_modes(own[0], mode)
            if any(m != mode for kind in own_modes.values() for m in kind):
                modes[name] = own_modes
        return cls(stats=stats, mode=mode, max_action_dim=max_action_dim, max_state_dim=max_state_dim, info=info,
                   modes=modes)

    @property
    def embodiments(self) -> list[str]:
        return sorted(self.stats)

    def dim_modes(self, embodiment: str, kind: str) -> list[str]:
        """The mode of every `kind` ("action" | "state") dimension of `embodiment`: `mode` or "none"."""
        return self.modes.get(embodiment, {}).get(kind) or [self.mode] * self._dim(embodiment, kind)

    def check_passthrough(self, clip: float | None) -> None:
        """Refuse an action dimension passed through ("none") whose training values leave [-clip, clip], the range
        the head clips sampled normalised actions to (`vla.policy.sample_clip`; None: no clip): the policy could
        not produce those values."""
        if clip is None:
            return
        for embodiment in self.modes:
            stats, names = self.stats[embodiment]["action"], self._action_names(embodiment)
            for d, mode in enumerate(self.dim_modes(embodiment, "action")):
                low, high = stats["min"][d], stats["max"][d]
                if mode == PASS and (low < -clip or high > clip):
                    raise ValueError(
                        f"{embodiment!r} passes action dimension {names[d]!r} through unnormalised (normalization: "
                        f"{PASS}), but its training values span [{low:g}, {high:g}], beyond the head's sample clip "
                        f"[-{clip:g}, {clip:g}] ({self.mode}): the policy could not output them; normalise that "
                        f"dimension with the policy's mode ({self.mode!r}) in the registry entry, or rescale it to "
                        f"[-{clip:g}, {clip:g}]")

    def action_dim(self, embodiment: str) -> int:
        return self._dim(embodiment, "action")

    def state_dim(self, embodiment: str) -> int:
        return self._dim(embodiment, "state")

    def action_mask(self, embodiment: str) -> Tensor:
        """bool [max_action_dim]: True for the embodiment's own action dimensions."""
        mask = torch.zeros(self.max_action_dim, dtype=torch.bool)
        mask[: self.action_dim(embodiment)] = True
        return mask

    def action_masks(self, embodiments: list[str]) -> Tensor:
        """bool [B, max_action_dim]: `action_mask` of each sample's embodiment."""
        return torch.stack([self.action_mask(e) for e in embodiments])

    def normalize_action(self, actions: Tensor, embodiment: str) -> Tensor:
        """actions [..., D] in robot units -> [..., max_action_dim], padded with zeros."""
        normalized = self._normalize(actions, embodiment, "action")
        bounded = self._params(embodiment, "action", actions)[3]
        normalized = torch.where(bounded, normalized.clamp(-1.0, 1.0), normalized)
        return _pad(normalized, self.max_action_dim)

    def unnormalize_action(self, actions: Tensor, embodiment: str) -> Tensor:
        """actions [..., max_action_dim] (or [..., D]) normalised -> [..., D] in robot units."""
        dim = self.action_dim(embodiment)
        if actions.shape[-1] not in (dim, self.max_action_dim):
            raise ValueError(f"normalised actions have {actions.shape[-1]} dims; expected {self.max_action_dim} "
                             f"(padded) or {dim} ({embodiment!r})")
        center, scale, valid, _ = self._params(embodiment, "action", actions)
        return torch.where(valid, actions[..., :dim] * scale + center, center)

    def unnormalize_actions(self, normalized: Tensor, embodiments: list[str]) -> tuple[Tensor, Tensor]:
        """normalized [B, ..., H, max_action_dim], one embodiment per row -> (actions [B, ..., H, D] in each
        embodiment's units on the CPU, zero-padded to the batch's widest embodiment D; mask bool [B, D], True at
        each row's own dims)."""
        chunks = [self.unnormalize_action(normalized[i].cpu(), e) for i, e in enumerate(embodiments)]
        width = max(c.shape[-1] for c in chunks)
        actions = torch.zeros(*normalized.shape[:-1], width)
        mask = torch.zeros(len(chunks), width, dtype=torch.bool)
        for i, chunk in enumerate(chunks):
            actions[i, ..., : chunk.shape[-1]] = chunk
            mask[i, : chunk.shape[-1]] = True
        return actions, mask

    def normalize_state_of(self, state: Tensor, embodiment: str) -> Tensor:
        """state [..., S] of one embodiment in robot units -> [..., max_state_dim] normalised, padded with zeros."""
        return _pad(self._normalize(state, embodiment, "state"), self.max_state_dim)

    def normalize_state(self, state: Tensor, embodiments: list[str]) -> Tensor:
        """state [B, S] with one embodiment per row -> [B, max_state_dim], padded with zeros.

        S must be the embodiment's state width (in a batch mixing embodiments: the widest of them, the
        narrower rows zero-padded); a wider or narrower state is an error, never sliced.
        """
        if state.ndim != 2 or len(embodiments) != state.shape[0]:
            raise ValueError(f"normalize_state needs state [B, S] and B embodiments; got shape {list(state.shape)} "
                             f"and {len(embodiments)} embodiments")
        dims = {e: self.state_dim(e) for e in sorted(set(embodiments))}
        width = max(dims.values())
        if state.shape[1] != width:
            raise ValueError(f"state has {state.shape[1]} dims; expected {width} for embodiment "
                             f"{' / '.join(f'{e!r} ({d})' for e, d in dims.items())}")
        out = state.new_zeros(state.shape[0], self.max_state_dim)
        for embodiment, dim in dims.items():
            rows = torch.tensor([e == embodiment for e in embodiments], device=state.device)
            if state[rows, dim:].any():
                raise ValueError(f"state of {embodiment!r} has values beyond its {dim} dims (padding must be zero)")
            out[rows, :dim] = self._normalize(state[rows, :dim], embodiment, "state")
        return out

    def save(self, path: str | Path) -> None:
        """Write mode, padded dims, statistics and per-dimension modes as JSON."""
        payload = {"mode": self.mode, "max_action_dim": self.max_action_dim, "max_state_dim": self.max_state_dim,
                   "stats": self.stats, "embodiments": {name: info.to_dict() for name, info in self.info.items()},
                   "modes": self.modes}
        Path(path).write_text(json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        """Read what save() wrote; every field must be present (the mode is never defaulted). A file without
        "modes" (written before per-dimension modes) uses the mode for every dimension."""
        payload = json.loads(Path(path).read_text())
        missing = [k for k in ("mode", "max_action_dim", "max_state_dim", "stats") if k not in payload]
        if missing:
            raise ValueError(f"normalisation file {path} lacks {missing}")
        info = {name: EmbodimentInfo(**fields) for name, fields in payload.get("embodiments", {}).items()}
        return cls(stats=payload["stats"], mode=payload["mode"], max_action_dim=payload["max_action_dim"],
                   max_state_dim=payload["max_state_dim"], info=info, modes=payload.get("modes", {}))

    def _stats_for(self, embodiment: str, kind: str) -> dict[str, list[float]]:
        if embodiment not in self.stats:
            raise ValueError(f"no normalisation statistics for embodiment {embodiment!r} in this checkpoint; "
                             f"it has {self.embodiments}. Fine-tune on data from this robot, or pass its statistics")
        return self.stats[embodiment][kind]

    def _dim(self, embodiment: str, kind: str) -> int:
        return len(self._stats_for(embodiment, kind)["mean"])

    def _action_names(self, embodiment: str) -> list[str]:
        names = self.info[embodiment].action_names if embodiment in self.info else []
        dim = self.action_dim(embodiment)
        return names if len(names) == dim else [f"dim {d}" for d in range(dim)]

    def _params(self, embodiment: str, kind: str, like: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(center, scale, valid, bounded) [D] so that normalised = (x - center) / scale where valid, else 0;
        bounded: the quantile dimensions (actions are clipped there). A "none" dimension is (0, 1, valid)."""
        key = (embodiment, kind, like.dtype, like.device)
        if key not in self._cache:
            s = {k: torch.tensor(v, dtype=torch.float64) for k, v in self._stats_for(embodiment, kind).items()}
            modes = self.dim_modes(embodiment, kind)
            bounded = torch.tensor([m == "quantile" for m in modes], dtype=torch.bool)
            passed = torch.tensor([m == PASS for m in modes], dtype=torch.bool)
            center = torch.where(bounded, (s["q99"] + s["q01"]) / 2, torch.where(passed, 0.0, s["mean"]))
            scale = torch.where(bounded, (s["q99"] - s["q01"]) / 2, torch.where(passed, 1.0, s["std"]))
            valid = (scale >= EPS) | passed
            params = (center, torch.where(valid, scale, torch.ones_like(scale)), valid, bounded)
            self._cache[key] = tuple(p.to(device=like.device, dtype=like.dtype if p.is_floating_point() else p.dtype)
                                     for p in params)
        return self._cache[key]

    def _normalize(self, x: Tensor, embodiment: str, kind: str) -> Tensor:
        dim = self._dim(embodiment, kind)
        if x.shape[-1] != dim:
            raise ValueError(f"{kind} has {x.shape[-1]} dims; expected {dim} for embodiment {embodiment!r}")
        center, scale, valid, _ = self._params(embodiment, kind, x)
        return torch.where(valid, (x - center) / scale, torch.zeros_like(x))


def entry_modes(entry: Embodiment, mode: str) -> dict[str, list[str]]:
    """{"action": [D], "state": [S]}: the mode of every dimension `entry` asks for, after checking that a policy
    normalising with `mode` can apply it: each must be `mode` or "none" (one policy has one mode, the range its head
    clips samples to depends on it); another is a ValueError naming the dimensions and the fix."""
    asked = {"action": entry.action_normalization, "state": entry.state_normalization}
    names = {"action": entry.action_names, "state": entry.state_names}
    other = {f"{kind} {name}": m for kind in KINDS for name, m in zip(names[kind], asked[kind], strict=True)
             if m not in (mode, PASS)}
    if other:
        theirs = sorted(set(other.values()))
        raise ValueError(f"{entry.source} normalises {other}, but this policy normalises with model.normalization="
                         f"{mode!r} (one policy has one mode; a dimension may also be {PASS!r}, passed through): set "
                         f"those parts' normalization to {mode!r} or {PASS!r}, or --model.normalization to "
                         f"{' / '.join(repr(m) for m in theirs)} with the entry's other parts to match")
    return asked


def source_modes(source, mode: str) -> dict[str, list[str]]:
    """The per-dimension modes of a frame source: its registry entry's (`entry_modes`), or `mode` everywhere."""
    entry = getattr(source, "entry", None)
    if entry is not None:
        return entry_modes(entry, mode)
    numeric = source.numeric()
    return {kind: [mode] * numeric[kind].shape[-1] for kind in KINDS}


def has_actions(source) -> bool:
    """Whether a frame source has action labels (False for action-free data; sources without the attribute, e.g.
    ones built by hand, have)."""
    return getattr(source, "has_actions", True)


def _pad(x: Tensor, dim: int) -> Tensor:
    """Zero-pad the last dimension of x [..., D] to `dim`."""
    return torch.nn.functional.pad(x, (0, dim - x.shape[-1]))
