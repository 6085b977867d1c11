"""The trainer's pre-flight: what ``--check`` and every launched rank refuse before any process group.

Shards against data-parallel ranks and loader workers, ``model.preset`` against ``model.init``'s config,
``parallel.sp_size`` against the world size and the head count, the validation section; each one line,
exit 2. The launchers (``launchers/local.sh``) run it once before starting any rank.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import megavg.models as mm
from megavg.models import registry
from megavg.train.__main__ import prepare
from megavg.utils.errors import UserError

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "configs/train/dcaev_tiny_test.yaml")
WAN = str(REPO / "configs/train/wan_flow_tiny.yaml")


def empty_shards(folder: Path, count: int) -> Path:
    """``count`` empty .tar files: enough for the shard-count checks (no index, nothing read)."""
    folder.mkdir()
    for i in range(count):
        (folder / f"shard-{i:06d}.tar").touch()
    return folder


def check(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "megavg.train", "--check", *argv], capture_output=True, text=True, cwd=REPO
    )


def test_too_few_shards_for_the_ranks_or_their_workers(tmp_path, monkeypatch):
    shards = empty_shards(tmp_path / "s", 2)
    base = ["--config", DEMO, f"data.shards={shards}", "data.num_workers=0"]
    prepare([*base, "--world-size", "2"])  # one shard per rank
    with pytest.raises(UserError, match="2 shard\\(s\\) cannot feed 4 data-parallel ranks"):
        prepare([*base, "--world-size", "4"])
    with pytest.raises(UserError, match="1 shard\\(s\\) cannot feed 2 loader workers of data-parallel rank"):
        prepare([*base, "--world-size", "2", "data.num_workers=2"])
    monkeypatch.setenv("WORLD_SIZE", "3")  # what a launcher gives each rank
    with pytest.raises(UserError, match="cannot feed 3 data-parallel ranks"):
        prepare(base)
    prepare([*base, "--world-size", "4", "parallel.sp_size=2"])  # 2 SP groups of 2: 2 data-parallel ranks


def test_sp_size_against_world_size_heads_and_task(tmp_path):
    shards = empty_shards(tmp_path / "s", 1)
    wan = ["--config", WAN, f"data.shards={shards}"]
    with pytest.raises(UserError, match="sp_size: 2 does not divide the world size 1 .*--world-size N"):
        prepare([*wan, "parallel.sp_size=2"])
    with pytest.raises(UserError, match="sp_size: 4 does not divide the world size 6$"):
        prepare([*wan, "parallel.sp_size=4", "--world-size", "6"])
    heads = registry.preset_args("wan-tiny-t2v").num_heads
    assert heads == 4
    with pytest.raises(UserError, match="4 attention heads are not divisible by the SP size 3"):
        prepare([*wan, "parallel.sp_size=3", "--world-size", "3"])
    prepare([*wan, "parallel.sp_size=2", "--world-size", "2"])
    teacher = registry.save(mm.build("wan-tiny-t2v"), tmp_path / "teacher")
    align = ["--config", str(REPO / "configs/train/adapt_1_align.yaml"), f"data.shards={shards}",
             "model.preset=wan-tiny-student-t2v", f"task.args.teacher={teacher}"]  # fmt: skip
    prepare(align)
    with pytest.raises(UserError, match="task adapt_align has no sequence parallelism"):
        prepare([*align, "parallel.sp_size=2", "--world-size", "2"])


def test_init_folder_must_be_the_preset_architecture(tmp_path):
    folder = registry.save(mm.build("wan-tiny-t2v"), tmp_path / "tiny")
    shards = empty_shards(tmp_path / "s", 1)
    wan = ["--config", WAN, f"data.shards={shards}", f"model.init={folder}"]
    prepare([*wan, "model.preset=wan-tiny-t2v"])  # the folder's own preset
    prepare([*wan, "model.preset=wan-tiny-t2v", "model.args={layers: {linear: torch}}"])  # a run choice
    with pytest.raises(UserError, match="not the architecture of model.preset dc-videogen-wan2.1-t2v-14b: "):
        prepare([*wan, "model.preset=dc-videogen-wan2.1-t2v-14b"])
    with pytest.raises(UserError, match="holds a wan model, model.preset dc-ae-v-tiny is dcaev"):
        prepare([*wan, "model.preset=dc-ae-v-tiny"])
    prepare([*wan, "model.preset="])  # no preset: the folder's model as it is


def test_validation_vae_must_match_the_dit_latents(tmp_path):
    vae = registry.save(mm.build("dc-ae-v-tiny"), tmp_path / "vae")
    shards = empty_shards(tmp_path / "s", 1)
    latent = registry.preset_args("dc-ae-v-tiny").latent_channels
    dit = registry.preset_args("wan-tiny-student-t2v").out_channels
    assert latent != dit
    run = ["--config", WAN, f"data.shards={shards}", "validation.every=1", "validation.prompts=[a fox]",
           f"validation.vae={vae}", f"validation.text_encoder={tmp_path}",
           "validation.size=[64,64]"]  # fmt: skip
    prepare(run)  # wan-tiny-t2v predicts the VAE's latents
    with pytest.raises(UserError, match=f"has {latent} latent channels, the DiT predicts {dit}"):
        prepare([*run, "model.preset=wan-tiny-student-t2v"])


def test_check_says_it_in_one_line_with_exit_2(tmp_path):
    shards = empty_shards(tmp_path / "s", 1)
    proc = check("--config", DEMO, f"data.shards={shards}", "--world-size", "2")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "error: 1 shard(s) cannot feed 2 data-parallel ranks: write at least 2 shards (smaller "
        "--samples-per-shard) or use fewer ranks/workers"
    ]


@pytest.mark.distributed
def test_local_launcher_refuses_before_starting_any_rank(tmp_path):
    """launchers/local.sh with 2 ranks and 1 shard: the error line alone, no DeepSpeed launcher report."""
    shards = empty_shards(tmp_path / "s", 1)
    env = {
        "PATH": "/usr/bin:/bin",
        "MEGAVG_PYTHON": sys.executable,
        "MEGAVG_NPROC": "2",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(["bash", "launchers/local.sh", "train", DEMO, f"data.shards={shards}"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [
        "error: 1 shard(s) cannot feed 2 data-parallel ranks: write at least 2 shards (smaller "
        "--samples-per-shard) or use fewer ranks/workers"
    ]
    assert "deepspeed" not in proc.stdout  # no rank was started


def test_ranks_other_than_0_exit_2_silently(tmp_path, monkeypatch, capsys):
    from megavg.train.__main__ import main

    shards = empty_shards(tmp_path / "s", 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as exit_:
        main(["--config", DEMO, f"data.shards={shards}"])
    assert exit_.value.code == 2 and capsys.readouterr().err == ""
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="cannot feed 2 data-parallel ranks"):
        main(["--config", DEMO, f"data.shards={shards}"])


def test_help_lists_every_config_key_with_type_and_default(capsys):
    from megavg.train.__main__ import parse_args
    from megavg.train.config import TrainConfig
    from megavg.utils.schema import to_dict

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict) and value and key not in ("args", "deepspeed_overrides"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    with pytest.raises(SystemExit):
        parse_args(["--help"])
    listed = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()
              if line.startswith("  ") and "." in line.split()[0]}  # fmt: skip
    assert set(leaves(to_dict(TrainConfig()))) <= set(listed)
    assert listed["schedule.steps"] == ["int", "1000"]
    assert listed["validation.solver"] == ["unipc|euler", "unipc"]
    assert listed["model.ema.decay"] == ["float", "|", "null", "null"]
    assert listed["checkpoint.exclude_frozen"] == ["bool", "true"]
