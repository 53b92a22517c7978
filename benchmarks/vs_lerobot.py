"""Our heads vs LeRobot's own ACT, Diffusion Policy and SmolVLA on the same data; same as `vla-eval vs-lerobot`.

    python benchmarks/vs_lerobot.py        # configs/bench/vs_lerobot.yaml -> docs/results/vs_lerobot.{md,png,json}
    python benchmarks/vs_lerobot.py --config_path=configs/bench/vs_lerobot_smoke.yaml   # plumbing check, minutes
"""

from vla.eval.vs_lerobot import main

if __name__ == "__main__":
    main()
