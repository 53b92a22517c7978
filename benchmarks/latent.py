"""Latent-action benchmark on Meta-World ML10 (UniVLA: latent actions learned from action-free video pretrain the
policy, then 10 labelled demos of each held-out task, against the same policy on the 10 demos alone); same as
`vla-eval latent`.

    python benchmarks/latent.py                        # writes docs/results/latent.md + .png + latent_results.json
    python benchmarks/latent.py --config_path configs/bench/latent_smoke.yaml --output_dir /tmp/latent  # tiny
"""

from vla.eval.latent_benchmark import main

if __name__ == "__main__":
    main()
