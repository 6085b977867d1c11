"""Build a DC-VideoGen student folder from a base Wan DiT folder (AE-Adapt-V, before phase 1).

    python tools/make_student.py --base WAN_FOLDER --out FOLDER [--in-channels 32] [--out-channels 32]

The student has patch size (1,1,1), a new patch embedder for the new latent channels (68 in for I2V:
noisy 32 + mask 4 + condition 32) and a zero-initialised output linear; every other weight is the base's.
"""

import argparse

import megavg.models
from megavg.models.wan.student import make_student
from megavg.utils.errors import UserError, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="megavg Wan model folder")
    parser.add_argument("--out", required=True)
    parser.add_argument("--in-channels", type=int, default=32)
    parser.add_argument("--out-channels", type=int, default=32)
    opts = parser.parse_args(argv)
    base = megavg.models.load(opts.base)
    if not hasattr(base, "patch_embed"):
        raise UserError(f"{opts.base}: not a Wan DiT model folder")
    make_student(base, opts.in_channels, opts.out_channels).save(opts.out)
    print(f"student of {opts.base} ({opts.in_channels} in, {opts.out_channels} out): wrote {opts.out}")


if __name__ == "__main__":
    run_cli(main)
