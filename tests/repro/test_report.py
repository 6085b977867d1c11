"""The reproduction page's sample grid: each column is one held-out prompt, and its real row shows a
held-out clip of that caption (not the first clips of the held-out folder)."""

from __future__ import annotations

import json

from megavg.repro.report import ARM_LABELS, grid_rows


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((json.dumps(r) if isinstance(r, dict) else r) + "\n" for r in rows))


def test_every_row_of_a_column_shows_the_same_caption(tmp_path):
    heldout, evals = tmp_path / "heldout", tmp_path / "eval"
    captions = ["a red square moves up", "a blue circle moves left", "a red square moves up", "a cyan disk"]
    write_lines(
        heldout / "list.jsonl", [{"path": f"clips/{i:06d}.mp4", "caption": c} for i, c in enumerate(captions)]
    )
    prompts = sorted(set(captions))  # as the world stage writes prompts.txt
    write_lines(heldout / "prompts.txt", prompts)
    for arm in ("adapt", "base"):
        rows = [{"file": f"{p}-{i}.mp4", "prompt": p, "prompt_index": n, "index": i}
                for n, p in enumerate(prompts) for i in (1, 0)]  # fmt: skip
        write_lines(evals / arm / "seed0" / "manifest.jsonl", rows)

    shown, rows = grid_rows(heldout, evals, ["adapt", "base"], videos=2)

    assert shown == ["a blue circle moves left", "a cyan disk"]
    assert rows.pop("real (held-out clip, same caption)") == [
        heldout / "clips/000001.mp4",
        heldout / "clips/000003.mp4",
    ]
    assert list(rows) == [ARM_LABELS["adapt"], ARM_LABELS["base"]]
    for arm, files in zip(("adapt", "base"), rows.values()):
        assert files == [evals / arm / "seed0" / f"{p}-0.mp4" for p in shown]
