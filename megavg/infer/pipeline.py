"""A generation pipeline on disk: which component is where, plus the sampler defaults.

Two layouts are accepted as ``PIPELINE``:

megavg (``tools/export_pipeline.py``)::

    pipeline.json        {"format": "megavg-pipeline", "version": 1, "transformer": "transformer", ...}
    transformer/         megavg model folder of the DiT (T2V or I2V; Wan 2.2 A14B: the high-noise expert)
    transformer_2/       Wan 2.2 A14B only: the low-noise expert, used for t < boundary x 1000
    vae/                 megavg model folder of DC-AE-V; a base pipeline (Wan 2.2 TI2V-5B): the Wan VAE
                         as a diffusers AutoencoderKLWan folder (:mod:`megavg.infer.wan_vae`)
    text_encoder/        umT5 (transformers folder; or the manifest names a folder / hub id elsewhere)
    image_encoder/       CLIP vision tower (I2V; transformers CLIPVisionModel folder)
    transformer_diffusers/   optional: the DiT as a diffusers WanTransformer3DModel folder

released DC-VideoGen-Wan2.1-14B (DESIGN.md §13): ``transformer_t2v/``, ``transformer_i2v/`` (diffusers
layout), the DC-AE-V ``.pt``, ``text_encoder/`` + ``tokenizer/`` (umT5), the CLIP ``.pth`` and
``scheduler/``; the DiT and the autoencoder are converted on load (``state_dict_adapter``), the T2V or
I2V transformer chosen by whether an image is given.

Architecture facts (grids, channels) come from the config files alone, so a bad request is refused
before any weight is read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megavg.infer.wan_vae import WanVAE, vae_folder, wan_vae_args
from megavg.models import registry
from megavg.utils.errors import UserError
from megavg.utils.schema import from_dict, to_dict

MANIFEST = "pipeline.json"
FORMAT = "megavg-pipeline"


@dataclass
class SamplerDefaults:
    """What ``generate`` uses when the command line does not say (DESIGN.md §5: UniPC, 50, CFG 5, shift 5)."""

    solver: str = "unipc"
    shift: float = 5.0
    steps: int = 50
    guidance: float = 5.0
    guidance_2: float | None = None  # the low-noise expert's guidance (Wan 2.2 A14B); None: ``guidance``
    fps: int = 16
    negative_prompt: str = ""


@dataclass
class Manifest:
    """``pipeline.json``: component locations (relative to the pipeline folder, absolute, or hub ids)."""

    format: str = FORMAT
    version: int = 1
    transformer: str = "transformer"
    vae: str = "vae"
    text_encoder: str = "text_encoder"
    tokenizer: str = ""  # "": the text encoder's folder holds the tokenizer
    image_encoder: str = ""  # I2V only
    scaling_factor: float = 1.0  # latents = scaling_factor * DC-AE-V latents
    text_max_length: int = 512
    sampler: SamplerDefaults = field(default_factory=SamplerDefaults)
    diffusers_transformer: str = ""
    vae_preset: str = ""  # released layout: the architecture of the authors' .pt
    transformer_2: str = ""  # Wan 2.2 A14B: the low-noise expert ("": one transformer)
    boundary: float | None = (
        None  # Wan 2.2 A14B: diffusers' boundary_ratio (high-noise expert at t >= it x 1000)
    )
    diffusers_transformer_2: str = ""
    # Wan 2.2 TI2V-5B (diffusers' expand_timesteps): one transformer for T2V and I2V; with an image, its
    # latent frame replaces frame 0 at timestep 0 (the sampler's ``first_frame``); needs a Wan 2.2 VAE
    expand_timesteps: bool = False


def write_manifest(manifest: Manifest, folder: Path) -> None:
    (folder / MANIFEST).write_text(json.dumps(to_dict(manifest), indent=2) + "\n")


@dataclass
class PipelineFolder:
    """A resolved pipeline: component paths plus cheap architecture facts (no weights read)."""

    root: Path
    manifest: Manifest
    released: bool = False
    transformers: dict[str, Path] = field(default_factory=dict)  # "t2v" / "i2v" -> location

    def transformer_for(self, i2v: bool) -> Path:
        kind = "i2v" if i2v else "t2v"
        if kind not in self.transformers:
            have = ", ".join(sorted(self.transformers)) or "none"
            raise UserError(f"{self.root}: no {kind.upper()} transformer in this pipeline (it has {have})")
        return self.transformers[kind]

    def transformer_args(self, i2v: bool):
        path = self.transformer_for(i2v)
        if self.released:
            from megavg.models.wan.state_dict_adapter import args_from_config

            return args_from_config(_read_json(path / "config.json"))
        return _megavg_args(path, "wan")

    def vae_args(self):
        """DC-AE-V's args, or :class:`~megavg.infer.wan_vae.WanVAEArgs` for a Wan VAE (a base pipeline)."""
        if self.released:
            return registry.preset_args(self.manifest.vae_preset)
        folder = self.locate(self.manifest.vae)
        if vae_folder(folder) is not None:
            return wan_vae_args(folder)
        return _megavg_args(folder, "dcaev")

    def locate(self, entry: str) -> Path:
        path = Path(entry)
        return path if path.is_absolute() else self.root / path

    def component(self, entry: str) -> str:
        """A local path (relative entries resolved against the pipeline folder; absolute ones, as older
        exports wrote them, as they are) or, when nothing is there, the entry as a hub id."""
        if not entry:
            return ""
        path = self.locate(entry)
        if not path.exists() and entry.startswith("."):
            raise UserError(f"{self.root / MANIFEST}: {entry} (relative to the pipeline folder) does not "
                            "exist: move the folder with its encoders, or edit the entry")  # fmt: skip
        return str(path) if path.exists() or Path(entry).is_absolute() else entry

    def load_transformer(self, i2v: bool, dtype: torch.dtype | None = None):
        path = self.transformer_for(i2v)
        if self.released:
            from megavg.models.wan.state_dict_adapter import convert

            return convert(path, dtype=dtype).eval()
        return registry.load(path, dtype=dtype).eval()

    def load_transformer_2(self, dtype: torch.dtype | None = None):
        """The low-noise expert of a two-expert (Wan 2.2 A14B) pipeline, or None."""
        if not self.manifest.transformer_2:
            return None
        return registry.load(self.locate(self.manifest.transformer_2), dtype=dtype).eval()

    def load_vae(self, dtype: torch.dtype | None = None):
        if self.released:
            from megavg.models.dcaev.model import Model
            from megavg.models.dcaev.state_dict_adapter import from_authors, read_authors_checkpoint

            path = self.locate(self.manifest.vae)
            with torch.device("meta"):
                model = Model(self.vae_args())
            state = from_authors(read_authors_checkpoint(path), model, str(path))
            model.load_state_dict(state, strict=True, assign=True)
            return model.to(dtype=dtype).eval()
        folder = self.locate(self.manifest.vae)
        if vae_folder(folder) is not None:
            return WanVAE.load(folder, dtype)
        return registry.load(folder, dtype=dtype).eval()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: missing")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _megavg_args(folder: Path, family: str):
    config = registry.read_config(folder)
    if config.get("family") != family:
        raise UserError(f"{folder}: a {config.get('family')} model folder, expected {family}")
    return registry.config_args(config)


def open_pipeline(path: str | Path) -> PipelineFolder:
    """Resolve ``path``: a megavg pipeline folder or the released DC-VideoGen folder (else UserError)."""
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such pipeline folder")
    if (root / MANIFEST).is_file():
        manifest = from_dict(Manifest, _read_json(root / MANIFEST), MANIFEST)
        if manifest.format != FORMAT or manifest.version != 1:
            raise UserError(f"{root / MANIFEST}: not a {FORMAT} version 1 manifest")
        pipe = PipelineFolder(root, manifest)
        transformer = pipe.locate(manifest.transformer)
        args = _megavg_args(transformer, "wan")
        pipe.transformers = {"i2v" if args.takes_image else "t2v": transformer}
        _check_experts(pipe, args)
        vae = pipe.vae_args()  # checks the VAE folder now
        if manifest.expand_timesteps:
            _check_first_frame(pipe, args, vae)
            pipe.transformers["i2v"] = transformer  # TI2V: the same DiT, the image as its first frame
        return pipe
    if (root / "transformer_t2v").is_dir() or (root / "transformer_i2v").is_dir():
        return _released(root)
    raise UserError(f"{root}: not a pipeline folder (no {MANIFEST}, no transformer_t2v/ or transformer_i2v/)")


def _check_experts(pipe: PipelineFolder, args) -> None:
    """A second transformer (Wan 2.2 A14B's low-noise expert) comes with a boundary and the same shapes."""
    m = pipe.manifest
    if bool(m.transformer_2) != (m.boundary is not None):
        raise UserError(f"{pipe.root / MANIFEST}: transformer_2 and boundary come together")
    if m.boundary is not None and not 0 < m.boundary < 1:
        raise UserError(f"{pipe.root / MANIFEST}: boundary {m.boundary} is not in (0, 1)")
    if m.transformer_2:
        args_2 = _megavg_args(pipe.locate(m.transformer_2), "wan")
        first, second = ((a.in_channels, a.out_channels, a.patch_size, a.image_dim) for a in (args, args_2))
        if first != second:
            raise UserError(f"{pipe.root}: transformer_2 {second} does not match transformer {first} "
                            "(in/out channels, patch, CLIP width)")  # fmt: skip


def _check_first_frame(pipe: PipelineFolder, args, vae) -> None:
    """TI2V (``expand_timesteps``): a text-to-video DiT over a Wan 2.2 VAE, whose image latent frame is what
    the DiT was trained to see (a DC-AE-V student's first-frame condition is not defined yet)."""
    if args.takes_image or pipe.manifest.transformer_2:
        raise UserError(f"{pipe.root / MANIFEST}: expand_timesteps (TI2V) takes one transformer without "
                        "image channels or CLIP tokens")  # fmt: skip
    if not getattr(vae, "first_frame_only", False):
        raise UserError(f"{pipe.root / MANIFEST}: expand_timesteps (TI2V) needs the Wan 2.2 VAE (an "
                        f"AutoencoderKLWan with patch_size) as vae, not {pipe.manifest.vae}")  # fmt: skip


def _released(root: Path) -> PipelineFolder:
    """The released DC-VideoGen-Wan2.1-14B folder as a pipeline."""
    vaes = sorted(root.glob("dc-ae-v*.pt"))  # the released file is dc-ae-v-f32t4c32-1.0-bf16.pt
    if len(vaes) != 1:
        raise UserError(f"{root}: expected one DC-AE-V checkpoint dc-ae-v*.pt, found {len(vaes)}")
    preset = _vae_preset(vaes[0])
    clips = sorted(root.glob("*clip*.pth"))
    sampler = SamplerDefaults()
    scheduler = root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        sampler.shift = float(_read_json(scheduler).get("flow_shift", sampler.shift))
    manifest = Manifest(
        vae=vaes[0].name,
        vae_preset=preset,
        text_encoder="text_encoder",
        tokenizer="tokenizer" if (root / "tokenizer").is_dir() else "",
        image_encoder=clips[0].name if clips else "",
        scaling_factor=registry.preset_args(preset).scaling_factor,
        sampler=sampler,
    )
    found = {k: root / f"transformer_{k}" for k in ("t2v", "i2v") if (root / f"transformer_{k}").is_dir()}
    return PipelineFolder(root, manifest, released=True, transformers=found)


def _vae_preset(path: Path) -> str:
    """The DC-AE-V preset a released checkpoint's file name starts with (longest match)."""
    names = [n for n in registry.list_presets() if n.startswith("dc-ae-v") and path.name.startswith(n)]
    if not names:
        raise UserError(f"{path}: file name names no DC-AE-V preset (expected e.g. dc-ae-v-f32t4c32-*.pt)")
    return max(names, key=len)
