"""The text context the Wan DiT sees — one definition for training, validation and sampling.

    context = pad_text([states])          # [B, 512, D]: each caption's encoder states, then zero rows
    null = pad_text([encode(NULL_CAPTION)])  # the null condition (CFG's unconditional branch)

Wan and diffusers' ``WanPipeline`` hand the DiT umT5 states zero-padded to 512 tokens, and the zero rows
are real cross-attention keys after ``text_embed`` (they become a constant key per token), so the length
and the zeros are part of the condition. Training pads every caption the same way (not to the batch's
longest caption), so a caption conditions the DiT identically in a training step and in ``generate``.

The null condition is diffusers' behaviour: the encoding of the empty caption ``""`` (umT5 gives one EOS
row), padded like any caption. Training's text dropout substitutes it (pre-computation stores it with
every sample) and ``generate`` uses it as the negative prompt unless told otherwise (``--negative-prompt``;
Wan's own runner uses a long standard negative prompt instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from megavg.utils.errors import UserError

TEXT_TOKENS = 512  # umT5 states per caption, zero-padded (Wan-2.1)
NULL_CAPTION = ""  # the caption whose encoding is the null condition


def pad_text(
    text: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor | None = None, tokens: int = TEXT_TOKENS
) -> torch.Tensor:
    """Text-encoder states as the DiT consumes them: [B, max(L, tokens), D], real rows first, zeros after.

    ``text`` is a list of B unpadded [L_i, D] tensors, or a [B, L, D] tensor with an optional ``mask``
    [B, L] (True = real token; the other rows are zeroed).
    """
    if not isinstance(text, torch.Tensor):
        if mask is not None:
            raise UserError("text: text_mask goes with a padded [B, L, D] tensor, not a list")
        if not text or any(t.ndim != 2 for t in text):
            raise UserError("text: a caption list must hold [L, D] tensors")
        length = max(t.shape[0] for t in text)
        text = torch.stack([F.pad(t, (0, 0, 0, length - t.shape[0])) for t in text])  # [B, L, D]
    elif text.ndim != 3:
        raise UserError(f"text: must be [B, L, D], got {tuple(text.shape)}")
    elif mask is not None:
        if mask.shape != text.shape[:2]:
            raise UserError(f"text: text_mask {tuple(mask.shape)} does not match text {tuple(text.shape)}")
        text = text * mask.to(text.device, torch.bool)[..., None]
    return F.pad(text, (0, 0, 0, max(0, tokens - text.shape[1])))  # [B, max(L, tokens), D]
