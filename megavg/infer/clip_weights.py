"""The CLIP ``.pth`` shipped with Wan-2.1 / DC-VideoGen (open-clip XLM-RoBERTa ViT-H/14) as a
transformers ``CLIPVisionModel``.

Only the vision tower (``visual.*``) is used. Its layout: ``patch_embedding`` (conv, no bias),
``cls_embedding`` [1, 1, D], ``pos_embedding`` [1, 1 + P, D], ``pre_norm``, ``transformer.N.{norm1,
attn.to_qkv (fused q|k|v rows), attn.proj, norm2, mlp.0, mlp.2}``, ``post_norm``, ``head``. The blocks are
pre-norm with exact GELU, as in CLIP, so every tensor maps one to one (the fused qkv split in three).
The text tower, ``visual.head`` and ``log_scale`` are not needed for image tokens and are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from megavg.infer.conditioning import ImageEncoder
from megavg.utils.errors import UserError

_BLOCK = re.compile(r"^visual\.transformer\.(\d+)\.(.+)$")
_BLOCK_NAMES = {
    "norm1": "layer_norm1",
    "attn.proj": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_TOP_NAMES = {"visual.pre_norm": "pre_layrnorm", "visual.post_norm": "post_layernorm"}
_DROPPED = ("visual.head", "log_scale")
HEAD_DIM = 80  # ViT-H/14: 1280 wide, 16 heads (not recoverable from tensor shapes)


def _rename(key: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    if key == "visual.patch_embedding.weight":
        return {"embeddings.patch_embedding.weight": tensor}
    if key == "visual.cls_embedding":
        return {"embeddings.class_embedding": tensor.reshape(-1)}
    if key == "visual.pos_embedding":
        return {"embeddings.position_embedding.weight": tensor.reshape(tensor.shape[-2], tensor.shape[-1])}
    for theirs, ours in _TOP_NAMES.items():
        if key.startswith(theirs + "."):
            return {ours + key[len(theirs) :]: tensor}
    match = _BLOCK.match(key)
    if not match:
        raise KeyError(key)
    index, rest = match.groups()
    prefix = f"encoder.layers.{index}."
    if rest.startswith("attn.to_qkv."):
        q, k, v = tensor.chunk(3, dim=0)  # rows: all of q, then k, then v
        kind = rest.rsplit(".", 1)[1]
        return {f"{prefix}self_attn.{n}_proj.{kind}": t for n, t in zip("qkv", (q, k, v))}
    for theirs, ours in _BLOCK_NAMES.items():
        if rest.startswith(theirs + "."):
            return {prefix + ours + rest[len(theirs) :]: tensor}
    raise KeyError(key)


def vision_state_dict(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """transformers ``CLIPVisionModel`` keys (transformers 5 naming) from a Wan CLIP state dict."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if not key.startswith("visual.") or key in _DROPPED:
            continue
        try:
            out.update(_rename(key, tensor))
        except KeyError:
            raise UserError(f"{source}: unexpected CLIP key {key!r}") from None
    if "embeddings.patch_embedding.weight" not in out:
        raise UserError(f"{source}: no visual.* tensors: not a Wan CLIP checkpoint")
    return out


def vision_config(state: dict[str, torch.Tensor], head_dim: int):
    """``CLIPVisionConfig`` implied by the tensor shapes (ViT-H/14: width 1280, 32 layers, 16 heads of
    ``head_dim`` 80, MLP 5120, 224 px)."""
    import transformers

    width, _, patch, _ = state["embeddings.patch_embedding.weight"].shape
    positions = state["embeddings.position_embedding.weight"].shape[0]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    return transformers.CLIPVisionConfig(
        hidden_size=width,
        intermediate_size=state["encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=layers,
        num_attention_heads=max(1, width // head_dim),
        image_size=round((positions - 1) ** 0.5) * patch,
        patch_size=patch,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
    )


def image_encoder_from_wan_clip(path: str | Path, head_dim: int | None = None) -> ImageEncoder:
    """An :class:`ImageEncoder` holding the vision tower of the Wan CLIP ``.pth`` at ``path`` (attention
    heads of ``head_dim``, default :data:`HEAD_DIM`)."""
    import transformers

    from megavg.models.wan.state_dict_adapter import read_weights

    state = vision_state_dict(read_weights(Path(path)), str(path))
    with torch.device("meta"):
        model = transformers.CLIPVisionModel(vision_config(state, head_dim or HEAD_DIM))
    model.to_empty(device="cpu")
    expected = model.state_dict()
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in expected) else ""  # transformers 4
    state = {prefix + k: v.float() for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise UserError(f"{path}: CLIP tensors do not match the vision tower ({(missing + unexpected)[0]})")
    model.load_state_dict(state, strict=True)
    for module in model.modules():  # non-persistent buffers: not in the checkpoint, left empty by to_empty
        if isinstance(getattr(module, "position_ids", None), torch.Tensor):
            module.position_ids.copy_(
                torch.arange(module.position_ids.shape[-1]).expand_as(module.position_ids)
            )
    return ImageEncoder.from_model(model)
