"""Run a trained policy on a robot (or the simulator): see vla/deploy/run.py, or `python deploy.py --help`."""

from vla.deploy.run import main

if __name__ == "__main__":
    main()
