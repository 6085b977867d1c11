"""Video metrics and evaluation sets: ``python -m megavg.eval {fvd,features,recon,generate} ...``.

    python -m megavg.eval fvd REAL_DIR FAKE_DIR --i3d kinetics400
    python -m megavg.eval features REAL_DIR --i3d kinetics400 --out real.npz
    python -m megavg.eval fvd FAKE_DIR --ref-stats real.npz --i3d kinetics400
    python -m megavg.eval recon REAL_DIR RECON_DIR --lpips-vgg vgg16.safetensors
    python -m megavg.eval generate PIPELINE --prompts prompts.txt --per-prompt 5 --out DIR -- --steps 50

The result is ONE JSON object on stdout (rank 0 only under torchrun); a readable table goes to stderr.
Under ``torchrun --nproc_per_node N -m megavg.eval ...`` the videos are shared among the ranks and the
results gathered. Bad input is one ``error:`` line and exit code 2. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from megavg.eval import features, fvd, generate, ranks, recon
from megavg.utils.errors import UserError, run_cli

COMMANDS = {"fvd": fvd, "features": features, "recon": recon, "generate": generate}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one error line and exit 2, like every other bad input
        raise UserError(f"{self.prog}: {message}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    head, _, usage = __doc__.partition("\n")
    p = _Parser(prog="python -m megavg.eval", description=head, epilog=usage,
                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module in COMMANDS.items():
        module.add_arguments(
            sub.add_parser(name, help=module.__doc__.split("\n")[0], description=module.__doc__)
        )
    argv = sys.argv[1:] if argv is None else list(argv)
    rest = argv.index("--") if "--" in argv else len(argv)  # after --: the generator's own options
    args = p.parse_args(argv[:rest])
    args.generator = argv[rest + 1 :]
    if args.generator and args.command != "generate":
        raise UserError(f"python -m megavg.eval {args.command}: unexpected arguments after --")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run one subcommand; print its JSON result on stdout and its table on stderr (rank 0)."""
    args = parse_args(argv)
    module = COMMANDS[args.command]
    with ranks.ranks():
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the JSON object alone
            result = module.run(args)
        if ranks.rank() == 0:
            print(module.table(result), file=sys.stderr, flush=True)
            print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    run_cli(main)
