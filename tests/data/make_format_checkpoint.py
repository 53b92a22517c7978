"""Write tiny checkpoints in the format of the vla on PYTHONPATH, with the actions they predict, for the
checkpoint-migration test (tests/test_hub.py::test_checkpoints_of_older_formats_load_and_act_the_same).

    PYTHONPATH=<checkout of the vla that writes format N> python tests/data/make_format_checkpoint.py \
        tests/data/checkpoint_v<N>

writes, under the output folder, one checkpoint per head (`dit/`, `ar/`: a token head, so the action tokenizer's
folder is covered) and `expected.safetensors`: a fixed observation and each checkpoint's actions for it, with the
sampling options in its metadata. Only APIs that format 1's code already had are used, so the script runs with any
later vla too. Keep the result tiny (tens of KB): it is checked in.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from vla.action_heads import DiTHeadConfig
from vla.action_heads.ar import ARHeadConfig
from vla.backbones.config import BackboneConfig
from vla.backbones.tiny import build_tiny_vlm
from vla.config import ModelConfig
from vla.data.embodiment import EmbodimentInfo
from vla.data.normalize import Normalizer, compute_stats
from vla.policy import VLAPolicy
from vla.tokenizers.bins import BinsTokenizerConfig
from vla.types import Observation

FAMILY = "smolvlm"
INSTRUCTION = "reach the goal"
EMBODIMENT = "tiny_arm"
IMAGE_SIZE, ACTION_DIM, STATE_DIM, HORIZON = 16, 3, 4, 2
OPTIONS = {"dit": {"num_steps": 3}, "ar": {}}  # sampling options of each checkpoint's predict


def normalizer(generator: torch.Generator) -> Normalizer:
    actions, state = torch.randn(64, ACTION_DIM, generator=generator), torch.randn(64, STATE_DIM, generator=generator)
    info = EmbodimentInfo(action_names=[f"a{i}" for i in range(ACTION_DIM)],
                          state_names=[f"s{i}" for i in range(STATE_DIM)], action_kind="ee_delta", fps=10.0)
    return Normalizer({EMBODIMENT: {"action": compute_stats(actions), "state": compute_stats(state)}}, "quantile",
                      max_action_dim=ACTION_DIM, max_state_dim=STATE_DIM, info={EMBODIMENT: info})


def build_policy(head: str, vlm: Path, generator: torch.Generator) -> VLAPolicy:
    small = dict(horizon=HORIZON)
    head_config = (DiTHeadConfig(hidden=8, depth=1, heads=2, **small) if head == "dit"
                   else ARHeadConfig(tokenizer=BinsTokenizerConfig(n_bins=8), **small))
    config = ModelConfig(backbone=BackboneConfig(family=FAMILY, pretrained=str(vlm)), head=head_config,
                         max_action_dim=ACTION_DIM, max_state_dim=STATE_DIM, image_size=IMAGE_SIZE)
    policy = VLAPolicy(config, normalizer(generator)).eval()
    with torch.no_grad():  # zero-initialised layers made non-zero: every weight then shapes the actions
        for param in policy.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    if head == "ar":
        chunks = torch.rand(32, HORIZON, ACTION_DIM, generator=generator) * 2 - 1
        tokenizer = policy.head.config.tokenizer_config
        from vla.tokenizers import build_tokenizer

        policy.head.set_action_tokenizer(build_tokenizer(tokenizer).fit(chunks.numpy(), embodiment=EMBODIMENT))
    return policy


def main(out: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    out.mkdir(parents=True, exist_ok=False)
    with tempfile.TemporaryDirectory() as tmp:
        vlm = build_tiny_vlm(FAMILY, Path(tmp) / "vlm", [INSTRUCTION], image_size=IMAGE_SIZE, patch_size=8,
                             hidden_size=8, vision_layers=1, text_layers=1, heads=2, vocab_size=270)
        obs = Observation(images=torch.randint(0, 256, (1, 1, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=torch.uint8,
                                               generator=generator),
                          state=torch.randn(1, STATE_DIM, generator=generator), instruction=[INSTRUCTION],
                          embodiment=[EMBODIMENT])
        tensors = {"images": obs.images, "state": obs.state}
        for head, options in OPTIONS.items():
            policy = build_policy(head, vlm, generator)
            policy.save_pretrained(out / head)
            with torch.no_grad():
                chunk = policy.predict(obs, generator=torch.Generator().manual_seed(0), **options)
            tensors[f"{head}_actions"] = chunk.actions
    metadata = {"instruction": INSTRUCTION, "embodiment": EMBODIMENT, "seed": "0", "options": json.dumps(OPTIONS)}
    save_file(tensors, str(out / "expected.safetensors"), metadata=metadata)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
