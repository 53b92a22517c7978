"""One policy on a cross-embodiment mixture (Meta-World Sawyer + robosuite UR5e + robosuite Panda through RLDS),
each robot evaluated closed loop; same as `vla-eval mixture`.

    python benchmarks/mixture.py          # configs/pretrain/sim_mixture.yaml -> outputs/mixture (~1 h on 2 cores)
    python benchmarks/mixture.py --config_path=configs/bench/mixture_smoke.yaml --results_dir=/tmp/mixture
"""

from vla.eval.mixture_benchmark import main

if __name__ == "__main__":
    main()
