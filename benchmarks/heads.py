"""Benchmark the continuous action heads (dit, dita, flow) and BAC; same as `vla-eval heads`.

    python benchmarks/heads.py                       # writes docs/results/heads.md + heads.png
    python benchmarks/heads.py --seeds='[0]' --train.steps=200 --output_dir=outputs/bench/smoke
"""

from vla.eval.heads_benchmark import main

if __name__ == "__main__":
    main()
