"""Few-shot benchmark on Meta-World ML10 (pretrain, then scratch vs full fine-tuning vs LoRA on 10 demos of each
held-out task); same as `vla-eval fewshot`.

    python benchmarks/fewshot.py                       # writes docs/results/fewshot.md + .png + fewshot_results.json
    python benchmarks/fewshot.py --config_path configs/bench/fewshot_smoke.yaml     # a minute: every stage, tiny
    python benchmarks/fewshot.py --config_path configs/bench/fewshot_gpu.yaml       # the GPU sizes
"""

from vla.eval.fewshot_benchmark import main

if __name__ == "__main__":
    main()
