"""Build a DC-VideoGen student folder from a base Wan DiT folder (AE-Adapt-V, before phase 1).

    python tools/make_student.py --base WAN_FOLDER --out FOLDER [--in-channels 32] [--out-channels 32]
        [--seed 0]

The student has patch size (1,1,1), a new patch embedder for the new latent channels (68 in for I2V:
noisy 32 + mask 4 + condition 32; random init from ``--seed``) and a zero-initialised output linear;
every other weight is the base's, copied one safetensors shard at a time (a 14B base is never held whole).
"""

import argparse

import torch

from megavg.models import registry
from megavg.models.wan import Args
from megavg.models.wan.student import student_state
from megavg.utils.errors import UserError, run_cli
from megavg.utils.schema import from_dict, to_dict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="megavg Wan model folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--in-channels", type=int, default=32)
    parser.add_argument("--out-channels", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0, help="seed of the new patch embedder's init")
    opts = parser.parse_args(argv)
    config = registry.read_config(opts.base)
    if config.get("family") != "wan":
        raise UserError(f"{opts.base}: not a Wan DiT model folder")
    base_args = from_dict(Args, config.get("args", {}), f"{opts.base} args")
    base = registry.load_state_dict(opts.base, lazy=True)
    torch.manual_seed(opts.seed)
    args, state = student_state(base_args, base, opts.in_channels, opts.out_channels)
    with torch.device("meta"):
        registry.check_state_dict(registry.build(args), state, opts.out)
    registry.save_state("wan", to_dict(args), state, opts.out)
    print(f"student of {opts.base} ({opts.in_channels} in, {opts.out_channels} out): wrote {opts.out}")


if __name__ == "__main__":
    run_cli(main)
