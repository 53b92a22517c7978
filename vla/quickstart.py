"""The quickstart: scripted Meta-World demos -> tiny VLM + DiT head -> closed-loop evaluation.

    vla-quickstart --config_path configs/quickstart.yaml        # ~20 min on a 2-core CPU
    vla-quickstart --config_path configs/quickstart_large.yaml  # more demos, steps, pixels

A fixed number of training steps, so the same command gives the same figures; running it again
reuses the demos, the tiny VLM and the finished training (see vla.pipeline).
"""

from __future__ import annotations

import draccus

from vla.pipeline import PipelineConfig, run_pipeline


def main(args: list[str] | None = None) -> None:
    run_pipeline(draccus.parse(PipelineConfig, args=args))


if __name__ == "__main__":
    main()
