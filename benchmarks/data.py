"""Loader throughput and memory: our streaming frame source vs LeRobot's loader; same as `vla-eval data`.

    python benchmarks/data.py                    # configs/bench/data.yaml -> docs/results/data.{md,json}
    python benchmarks/data.py --config_path=configs/bench/data_smoke.yaml     # plumbing check, seconds
"""

from vla.eval.data_benchmark import main

if __name__ == "__main__":
    main()
