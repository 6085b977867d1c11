"""A ZeRO-3 checkpoint of a training run (latest, or --step/--tag) -> megavg model folder. See
megavg.train.consolidate."""

from megavg.train.consolidate import main
from megavg.utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
