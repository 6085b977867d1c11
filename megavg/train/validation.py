"""Validation videos during training (``validation:``, docs/validation.md).

Every ``validation.every`` optimizer steps (and after the last one) the live DiT - ZeRO-3 partitioned
and under Ulysses SP where configured - generates each validation prompt with the runner's own code:
:func:`megavg.infer.st.encode_inputs` (text, negative text, I2V CLIP tokens and first-frame
condition), :func:`~megavg.infer.st.initial_noise`, :func:`megavg.infer.sampling.sample` and the
streamed DC-AE-V decode :func:`~megavg.infer.st.decode_to_video`. Rank 0 writes
``run.dir/validation/step_NNNNNNN/<index>.mp4`` (atomically) and a tensorboard entry per prompt.

- Conditioning is computed once, on rank 0 and on the CPU (the text encoder never reaches the GPU and is
  freed right after), in a background thread while training runs (:class:`StoredInputs`), and stored with
  the initial noise in ``run.dir/validation/inputs.pt``; every rank reads that file at the first
  validation, and a resumed run reuses it (recomputed only when the validation inputs changed).
- All ranks run every forward (ZeRO-3 parameter gathers and Ulysses all-to-alls are collectives), on the
  same full inputs; only rank 0 decodes and writes.
- The noise of prompt ``i`` is drawn on the CPU from ``validation.seed + i`` alone, so a prompt gives the
  same video after a resume and on any world size. The sampler draws nothing else; the global RNG state
  is saved and restored around validation anyway, so training never sees it.
- Weights: the live (trained) weights, not the EMA (``model.ema``): the EMA lives as flat optimizer
  partitions and would have to be swapped into the parameters; the video shows what the optimizer has.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from megavg.infer import request as rq
from megavg.infer import stages as st
from megavg.infer.stage_log import StageLog
from megavg.infer.video_io import VideoWriter
from megavg.train.config import TrainConfig, ValidationConfig
from megavg.utils.device import agree
from megavg.utils.errors import UserError
from megavg.utils.io import atomic_file
from megavg.utils.logging import get_logger
from megavg.utils.schema import to_dict

log = get_logger(__name__)
TB_STRIP_FRAMES = 8  # frames in the tensorboard strip when video summaries are unavailable


# ---- inputs, checked before launch ------------------------------------------------------------------


def read_prompts(cfg: ValidationConfig) -> list[str]:
    """The prompts: the inline list, or the non-empty lines of the file ``prompts`` names."""
    if isinstance(cfg.prompts, str):
        path = Path(cfg.prompts)
        if not path.is_file():
            raise UserError(f"config validation.prompts: {path}: no such prompt file")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = [p.strip() for p in cfg.prompts]
    if not prompts or not all(prompts):
        raise UserError("config validation.prompts: give at least one prompt, none of them empty")
    return prompts


@dataclasses.dataclass
class Components:
    """Where the validation's VAE and encoders come from (a pipeline folder or single entries)."""

    vae: str
    text_encoder: str
    tokenizer: str
    image_encoder: str
    scaling_factor: float | None  # None: the VAE's own
    text_max_length: int = 512
    pipeline: object = None

    def vae_args(self):
        if self.pipeline is not None:
            return self.pipeline.vae_args()
        from megavg.models import registry

        config = registry.read_config(self.vae)
        if config.get("family") != "dcaev":
            raise UserError(f"config validation.vae: {self.vae} is a {config.get('family')} model folder")
        return registry.config_args(config)

    def load_vae(self) -> nn.Module:
        """DC-AE-V in fp32 on the CPU."""
        if self.pipeline is not None:
            return self.pipeline.load_vae(dtype=torch.float32)
        from megavg.models import registry

        return registry.load(self.vae, dtype=torch.float32).eval()


def components(cfg: ValidationConfig) -> Components:
    if cfg.pipeline:
        if cfg.vae or cfg.text_encoder:
            raise UserError("config validation: give either pipeline or vae + text_encoder, not both")
        from megavg.infer.pipeline import open_pipeline

        pipe = open_pipeline(cfg.pipeline)
        m = pipe.manifest
        tokenizer = cfg.tokenizer or pipe.component(m.tokenizer)
        image = cfg.image_encoder or pipe.component(m.image_encoder)
        text = pipe.component(m.text_encoder)
        return Components(
            str(pipe.locate(m.vae)), text, tokenizer, image, m.scaling_factor, m.text_max_length, pipe
        )
    if not cfg.vae or not cfg.text_encoder:
        raise UserError("config validation: set pipeline, or both vae (DC-AE-V folder) and text_encoder")
    if not Path(cfg.vae).is_dir():
        raise UserError(f"config validation.vae: {cfg.vae}: no such model folder")
    return Components(cfg.vae, cfg.text_encoder, cfg.tokenizer, cfg.image_encoder, None)


def check(cfg: TrainConfig) -> None:
    """Pre-launch checks of ``validation:`` (prompts, images, components, size on the model's grid)."""
    v = cfg.validation
    if not v.enabled:
        return
    from megavg.tasks.base import model_args

    prompts, dit = read_prompts(v), model_args(cfg.model)
    if dit.takes_image != bool(v.images):
        raise UserError(
            "config validation.images: "
            + (
                "the I2V model needs one image per prompt"
                if dit.takes_image
                else "a T2V model takes no images"
            )
        )
    if v.images and len(v.images) != len(prompts):
        raise UserError(f"config validation.images: {len(v.images)} images for {len(prompts)} prompts")
    for image in v.images:
        if not Path(image).is_file():
            raise UserError(f"config validation.images: {image}: no such image file")
    comps = components(v)
    if dit.is_i2v and not comps.image_encoder:
        raise UserError("config validation.image_encoder: needed for an I2V model (or a pipeline with one)")
    vae = comps.vae_args()
    if vae.latent_channels != dit.out_channels:
        raise UserError(f"config validation: the VAE ({comps.vae}) has {vae.latent_channels} latent "
                        f"channels, the DiT predicts {dit.out_channels}")  # fmt: skip
    multiple = vae.spatial_compression * dit.patch_size[1]
    if not v.images and any(n <= 0 or n % multiple for n in v.size):
        raise UserError(f"config validation.size: {list(v.size)} must be positive multiples of {multiple}")
    if expert_side(cfg) is not None:
        check_partner(v.partner, dit)


def expert_side(cfg: TrainConfig) -> tuple[str, float] | None:
    """With ``validation.partner`` (Wan 2.2 A14B, one job per expert): ("high" or "low", boundary), the
    expert this run trains, read off ``task.args.timestep_range``: [b, 1] is the high-noise expert,
    [0, b] the low-noise one. None without a partner."""
    v = cfg.validation
    if not v.partner:
        if v.guidance_2 is not None:
            raise UserError("config validation.guidance_2: the low-noise expert's guidance needs a partner")
        return None
    low, high = (float(x) for x in cfg.task.args.get("timestep_range", (0.0, 1.0)))
    if high == 1.0 and 0.0 < low:
        return "high", low
    if low == 0.0 and high < 1.0:
        return "low", high
    raise UserError(
        f"config validation.partner: task.args.timestep_range {[low, high]} must be [b, 1.0] (this run "
        "trains the high-noise expert) or [0.0, b] (the low-noise one), b the experts' boundary"
    )


def check_partner(folder: str, dit) -> None:
    """The partner is a Wan model folder shaped like the trained DiT (channels, patch, CLIP width)."""
    from megavg.models import registry

    if not Path(folder).is_dir():
        raise UserError(f"config validation.partner: {folder}: no such model folder")
    config = registry.read_config(folder)
    if config.get("family") != "wan":
        raise UserError(f"config validation.partner: {folder} is a {config.get('family')} model folder")
    args = registry.config_args(config)
    mine, theirs = ((a.in_channels, a.out_channels, tuple(a.patch_size), a.image_dim) for a in (dit, args))
    if mine != theirs:
        raise UserError(f"config validation.partner: {folder} {theirs} does not match the trained model "
                        f"{mine} (in/out channels, patch, CLIP width)")  # fmt: skip


# ---- conditioning, computed once --------------------------------------------------------------------


def _requests(cfg: ValidationConfig, dit_args, vae_args) -> list[rq.Request]:
    """One generate request per prompt (I2V: the output size follows each image's aspect)."""
    multiple = vae_args.spatial_compression * dit_args.patch_size[1]
    frames = rq.grid_frames(cfg.frames, vae_args.temporal_compression * dit_args.patch_size[0])
    out = []
    for i, prompt in enumerate(read_prompts(cfg)):
        image = rq.load_image(cfg.images[i]) if cfg.images else None
        size = tuple(cfg.size)
        if image is not None:
            size = rq.image_size_for(tuple(image.shape[-2:]), size, multiple)
        out.append(rq.Request(prompt, cfg.negative_prompt, image, size, frames, cfg.steps,
                              cfg.guidance, cfg.shift, cfg.solver, cfg.fps, clip_tokens=dit_args.is_i2v,
                              guidance_2=cfg.guidance_2 if cfg.partner else None))  # fmt: skip
    return out


def encode_all(cfg: ValidationConfig, comps: Components, dit: nn.Module, vae: nn.Module) -> list[dict]:
    """Per prompt: the runner's encoded inputs (CPU, fp32 encoders) and its initial noise."""
    from megavg.infer.text import TextEncoder

    cpu = torch.device("cpu")
    text = TextEncoder(
        comps.text_encoder, "cpu", torch.float32, comps.text_max_length, comps.tokenizer or None
    )
    image = st.load_image_encoder_from(comps.image_encoder) if cfg.images else None
    items = []
    for i, req in enumerate(_requests(cfg, dit.args, vae.args)):
        models = st.Models(text, dit, vae, image)
        encoded = st.encode_inputs(models, req, st.Placement(cpu, False), StageLog(cpu))
        noise = st.initial_noise(models, req, cfg.seed + i)  # CPU generator: any world size
        items.append({**encoded, "noise": noise, "request": {**vars(req), "image": None}})
    del text, image  # the encoders are not needed again
    return items


def inputs_key(cfg: ValidationConfig) -> dict:
    """What the stored inputs depend on (everything but ``every``), plus the prompt texts."""
    key = {k: v for k, v in to_dict(cfg).items() if k != "every"}
    return key | {"prompt_list": read_prompts(cfg)}


class StoredInputs:
    """The validation inputs in ``path``: read when they match ``cfg``, else encoded by rank 0 *while
    training runs* (a background thread) and stored.

    Encoding (umT5-XXL in fp32 on the CPU, ~23 GB; for I2V a DC-AE-V encode per prompt) takes minutes at
    14B; the other ranks do not wait for it: they train. :meth:`items`, called by every rank at the first
    validation, joins the thread on rank 0 and agrees over the ranks that the file is ready (one
    all-reduce: a failure raises on every rank instead of leaving the others in a collective), then every
    rank reads the file. A resumed run with unchanged settings reads the stored file at once.
    """

    def __init__(self, cfg: ValidationConfig, comps: Components, dit, vae, path: Path) -> None:
        self.path, self.error, self.thread, self._items = path, None, None, None
        if dist.get_rank() != 0:
            return
        key = inputs_key(cfg)
        stored = torch.load(path, weights_only=False) if path.is_file() else None
        if stored is None or stored["key"] != key:
            self.thread = threading.Thread(target=self._encode, args=(cfg, comps, dit, vae, key), daemon=True)
            self.thread.start()

    def _encode(self, cfg, comps, dit, vae, key) -> None:
        try:
            start = time.perf_counter()
            with torch.no_grad():  # grad mode is per thread
                stored = {"key": key, "items": encode_all(cfg, comps, dit, vae)}
            with atomic_file(self.path) as tmp:
                torch.save(stored, tmp)
            seconds = time.perf_counter() - start
            count = len(stored["items"])
            log.info(f"validation: {count} prompts encoded in {seconds:.1f} s (rank 0, while training)")
        except BaseException as err:  # reported (on every rank) when the inputs are needed
            self.error = err

    def items(self) -> list[dict]:
        """The encoded inputs (collective on first use)."""
        if self._items is None:
            if self.thread is not None:
                self.thread.join()
            if not agree(self.error is None, every=True):
                if self.error is not None:
                    raise self.error
                raise UserError("validation: rank 0 could not encode the validation inputs (see its log)")
            self._items = torch.load(self.path, weights_only=False)["items"]
        return self._items


# ---- the validation pass ----------------------------------------------------------------------------


class _Collect:
    """A video writer that also keeps the frames (for tensorboard)."""

    def __init__(self, writer) -> None:
        self.writer, self.pieces = writer, []

    def write(self, piece: torch.Tensor) -> None:
        self.writer.write(piece)
        self.pieces.append(piece)


class Validator:
    """Built once per run (after the engine); :meth:`run` on every rank at the steps :meth:`due` says."""

    def __init__(self, cfg: TrainConfig, dit: nn.Module, device: torch.device) -> None:
        self.cfg, self.device = cfg.validation, device
        self.dir = Path(cfg.run.dir) / "validation"
        self.rank0 = dist.get_rank() == 0
        comps = components(self.cfg)
        self.vae = comps.load_vae() if self.rank0 else None  # decoding is rank 0's; CPU between passes
        self.scaling = comps.scaling_factor or (self.vae.args.scaling_factor if self.vae else 1.0)
        self.inputs = StoredInputs(self.cfg, comps, dit, self.vae, self.dir / "inputs.pt")
        self.side = expert_side(cfg)
        self.partner = None
        if self.side is not None:  # every rank runs its forwards too (local: no collectives), CPU between
            from megavg.models import registry

            dtype = next(dit.parameters()).dtype
            self.partner = registry.load(self.cfg.partner, dtype=dtype).eval().requires_grad_(False)

    def due(self, step: int, last: bool) -> bool:
        return step % self.cfg.every == 0 or last

    def run(self, engine, step: int, metrics, stop=None) -> bool:
        """Generate every prompt with the live model; rank 0 writes the videos. With ``stop`` (a
        :class:`~megavg.train.signals.StopFlag`) the ranks agree before every model call whether a stop
        signal came, and end the pass early if so (returns False; True when every prompt was done)."""
        start = time.perf_counter()
        module = getattr(engine, "module", engine)
        training = module.training
        module.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        model = engine if stop is None else _Interruptible(engine, stop)
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                for index, item in enumerate(self.inputs.items()):
                    latents = self.sample(model, item)
                    if self.rank0:
                        self.write(latents, item, step, index, metrics)
        except _Stopped:
            log.info(f"stop signal during validation at step {step}: its videos are incomplete")
            return False
        finally:
            module.train(training)
        metrics.log(step, {"validation/seconds": time.perf_counter() - start})
        return True

    def sample(self, engine, item: dict) -> torch.Tensor:
        from megavg.infer.sampling import sample

        move = {k: None if item[k] is None else item[k].to(self.device) for k in
                ("text", "negative_text", "image", "condition")}  # fmt: skip
        with self.experts(engine) as (model, two):
            return sample(
                model, item["noise"].to(self.device), move["text"], move["negative_text"],
                steps=self.cfg.steps, guidance=self.cfg.guidance, shift=self.cfg.shift,
                solver=self.cfg.solver, condition=move["condition"], image=move["image"], progress=False,
                model_group=dist.group.WORLD, **two,
            )  # fmt: skip

    @contextlib.contextmanager
    def experts(self, engine):
        """(first model, the sampler's two-expert arguments): the live model alone, or with the partner in
        its place (high-noise expert first), the partner on the device only during its own steps."""
        if self.partner is None:
            yield engine, {}
            return
        side, boundary = self.side
        high, low = (engine, self.partner) if side == "high" else (self.partner, engine)

        def activate(model) -> None:
            self.partner.to(self.device if model is self.partner else "cpu")

        try:
            two = dict(model_2=low, boundary=boundary, guidance_2=self.cfg.guidance_2, activate=activate)
            yield high, two
        finally:
            self.partner.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def write(self, latents: torch.Tensor, item: dict, step: int, index: int, metrics) -> None:
        """Decode (streamed) into ``step_NNNNNNN/<index>.mp4`` and add the tensorboard entry."""
        req = rq.Request(**item["request"])
        latents = latents.float() / self.scaling
        tile = st.auto_tile(latents.shape[-2:], 0)
        path = self.dir / f"step_{step:07d}" / f"{index}.mp4"
        with _placed(self.vae, self.device), VideoWriter(path, req.fps) as writer:
            collect = _Collect(writer)
            st.decode_to_video(self.vae, latents, collect, req, tile)
        if metrics.tb is not None:
            video = torch.cat(collect.pieces, dim=2)[0]  # 3, T, H, W in [-1, 1]
            add_tensorboard_video(metrics.tb, f"validation/{index}", video, step, req.fps)


class _Stopped(Exception):
    """The ranks agreed to stop in the middle of a validation pass."""


class _Interruptible:
    """The model as the sampler sees it, asking ``stop`` (agreed over all ranks: a collective each rank
    issues before the same model call) whether to go on before every call."""

    def __init__(self, model, stop) -> None:
        self.model, self.stop = model, stop

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, *args, **kwargs):
        if self.stop.agreed():
            raise _Stopped
        return self.model(*args, **kwargs)


@contextlib.contextmanager
def _placed(module: nn.Module, device: torch.device):
    """``module`` on ``device`` inside, back on the CPU after (it waits there between validations)."""
    module.to(device)
    try:
        yield module
    finally:
        module.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()


def add_tensorboard_video(tb, tag: str, video: torch.Tensor, step: int, fps: int) -> None:
    """A tensorboard video summary (needs moviepy), else a strip of up to 8 evenly spaced frames."""
    frames = ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # 3, T, H, W
    try:
        import moviepy  # noqa: F401  (tensorboard's add_video encodes GIFs with it)
    except ImportError:
        picks = torch.linspace(0, frames.shape[1] - 1, min(TB_STRIP_FRAMES, frames.shape[1])).round().long()
        strip = torch.cat(list(frames[:, picks].unbind(1)), dim=2)  # 3, H, n * W
        tb.add_image(tag, strip, step)
        return
    tb.add_video(tag, frames.permute(1, 0, 2, 3).unsqueeze(0), step, fps=fps)  # 1, T, 3, H, W
