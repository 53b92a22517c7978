"""RoboMonkey-style test-time scaling: success and latency vs samples per observation, and the offline error vs
samples curve with its power-law fit; same as `vla-eval robomonkey`.

    python benchmarks/robomonkey.py                   # configs/bench/robomonkey.yaml -> docs/results/robomonkey.*
    python benchmarks/robomonkey.py --config_path=configs/bench/robomonkey_smoke.yaml     # plumbing check
"""

from vla.eval.robomonkey import main

if __name__ == "__main__":
    main()
