"""``python -m megavg.repro [--smoke] [--out DIR] [--until STAGE]``: the miniature DC-VideoGen reproduction.

Runs every stage in order (docs/reproduction.md); a finished stage (``DIR/<stage>/DONE.json``) is skipped,
so rerunning the command resumes. ``--smoke`` runs each stage at toy size (mechanics only) into
``runs/repro_smoke``. ``tools/reproduce.sh`` is the same command.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from megavg.repro import report, stage_data, stage_eval, stage_train
from megavg.repro.sizes import FULL, SMOKE
from megavg.repro.stages import Context, run_stage
from megavg.utils.errors import UserError, run_cli


def stage_list() -> list[tuple[str, object]]:
    """(name, body) of every stage, in order."""
    return [
        ("world", stage_data.world),
        ("text", stage_data.text),
        ("ae_teacher", lambda ctx: stage_data.train_autoencoder(ctx, "ae_teacher")),
        ("latents_teacher", stage_data.teacher_latents),
        ("decoder_ae_teacher", functools.partial(stage_data.finetune_decoder, stage="ae_teacher")),
        ("base", stage_train.base),
        ("ae_student", lambda ctx: stage_data.train_autoencoder(ctx, "ae_student")),
        ("latents_student", stage_data.student_latents),
        ("decoder_ae_student", functools.partial(stage_data.finetune_decoder, stage="ae_student")),
        ("adapt", stage_train.adapt),
        ("noalign", lambda ctx: stage_train.adapt(ctx, "noalign", align=False)),
        ("scratch", stage_train.scratch),
        *[(f"eval_{arm}", functools.partial(stage_eval.evaluate_arm, arm=arm)) for arm in report.EVALUATED],
        ("report", write_report),
    ]


def write_report(ctx: Context) -> dict:
    notes = (Path(__file__).parent / "notes.md").read_text()
    return report.report(ctx, [name for name, _ in stage_list()], notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m megavg.repro", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, mechanics only (a few minutes)")
    parser.add_argument("--out", help="run folder (default runs/repro, or runs/repro_smoke with --smoke)")
    parser.add_argument("--until", help="stop after this stage")
    parser.add_argument("--only", nargs="+", help="run just these stages (their inputs must be done)")
    args = parser.parse_args(argv)
    names = [name for name, _ in stage_list()]
    for name in [args.until or names[0], *(args.only or [])]:
        if name not in names:
            raise UserError(f"stage {name}: not a stage ({', '.join(names)})")
    out = Path(args.out or ("runs/repro_smoke" if args.smoke else "runs/repro"))
    ctx = Context(out=out, sizes=SMOKE if args.smoke else FULL, smoke=args.smoke)
    for name, body in stage_list():
        if args.only and name not in args.only:
            continue
        run_stage(ctx, name, body)
        if name == args.until:
            break


if __name__ == "__main__":
    run_cli(main)
