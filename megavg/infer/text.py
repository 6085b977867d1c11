"""Text conditioning through transformers: umT5 (Wan-2.1) or any T5-style encoder folder or hub id.

encoder = TextEncoder("google/umt5-xxl")            # online; or a local folder (offline)
embeddings = encoder(["a cat surfing"])             # list of [L_i, D], padding removed
context = encoder.padded(["a cat surfing"])         # [B, 512, D], zeros after each caption (Wan)
"""

from __future__ import annotations

import os

import torch

from megavg.conditioning.text import pad_text
from megavg.utils.device import resolve_device
from megavg.utils.errors import LOAD_ERRORS, UserError

WAN_TEXT_ENCODER = "google/umt5-xxl"  # Wan-2.1 conditions on umT5-XXL, 512 tokens


class TextEncoder:
    """Tokenizer + encoder-only T5/umT5; returns one unpadded embedding per caption."""

    def __init__(
        self,
        name_or_path: str,
        device: str = "cpu",
        dtype=torch.float32,
        max_length: int = 512,
        tokenizer: str | None = None,
    ):
        import transformers

        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        try:
            config = transformers.AutoConfig.from_pretrained(name_or_path, local_files_only=offline)
            model_cls = (
                transformers.UMT5EncoderModel if config.model_type == "umt5" else transformers.T5EncoderModel
            )
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(
                tokenizer or name_or_path, local_files_only=offline
            )
            self.model = model_cls.from_pretrained(name_or_path, torch_dtype=dtype, local_files_only=offline)
        except LOAD_ERRORS as err:
            raise UserError(
                f"text encoder {name_or_path}: cannot load ({str(err).splitlines()[0]})"
            ) from None
        device = resolve_device(device)  # "cuda": this rank's GPU, not cuda:0 for every rank
        self.model.to(device).eval()
        self.device, self.max_length = device, max_length

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def to(self, device) -> TextEncoder:
        self.model.to(device)
        self.device = device
        return self

    def padded(self, captions: list[str]) -> torch.Tensor:
        """[B, 512, D] float32: each caption's states, then zeros — :func:`megavg.conditioning.text.pad_text`,
        the padding training batches get (the padding tokens are masked inside the encoder)."""
        return pad_text(self(captions))

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> list[torch.Tensor]:
        tokens = self.tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask
        ).last_hidden_state
        lengths = tokens.attention_mask.sum(dim=1).tolist()
        return [h[:n].float().cpu() for h, n in zip(hidden, lengths)]  # [L_i, D] each
