"""Cost at equal size: our dit / dita / flow heads vs LeRobot's Diffusion Policy and ACT; same as `vla-eval cost`.

    python benchmarks/cost.py                    # configs/bench/cost.yaml -> docs/results/cost.{md,json}
    python benchmarks/cost.py --config_path=configs/bench/cost_smoke.yaml     # plumbing check, seconds
"""

from vla.eval.cost import main

if __name__ == "__main__":
    main()
