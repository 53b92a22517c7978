"""Entry point for `accelerate launch train.py --config_path ...`; the same as `vla-train`."""

from vla.training.train import main

if __name__ == "__main__":
    main()
