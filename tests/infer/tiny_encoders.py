"""Tiny encoders built and saved locally (random weights, no download) in the layouts users point at:
a T5 text encoder + tokenizer, a Wan-2.1 VAE (diffusers) and a CLIP vision model (transformers)."""

import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

WORDS = ["<pad>", "</s>", "<unk>", "a", "car", "phone", "bikes", "video"]


def tiny_text_encoder(folder, d_model=16, umt5=False):
    """A random 1-layer T5 (or umT5, Wan's text encoder) encoder + word-level tokenizer saved like a hub
    folder."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # (u)mT5 tokenizers append </s>: "" encodes to one EOS row (the null condition)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", WORDS.index("</s>"))]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    config_cls, model_cls = (
        (transformers.UMT5Config, transformers.UMT5EncoderModel)
        if umt5
        else (transformers.T5Config, transformers.T5EncoderModel)
    )
    config = config_cls(vocab_size=len(WORDS), d_model=d_model, d_kv=4, num_heads=2, d_ff=32, num_layers=1)
    model_cls(config).save_pretrained(folder)


def tiny_wan_vae(folder, z_dim=16):
    """A random small AutoencoderKLWan (f8t4, ``z_dim`` channels) with non-trivial latents_mean/std,
    saved as the ``vae/`` subfolder of a diffusers pipeline folder."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.05 * i - 0.3 for i in range(z_dim)],
        latents_std=[0.5 + 0.1 * i for i in range(z_dim)],
    )
    vae.save_pretrained(folder / "vae")
    return vae


def tiny_clip(folder, hidden_size=24, image_size=28, patch_size=14):
    """A random 3-layer CLIP vision model + image processor saved like a hub folder (ViT-H/14 layout:
    (image_size / 14)^2 + 1 tokens of ``hidden_size``)."""
    config = transformers.CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=3,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    transformers.CLIPVisionModel(config).save_pretrained(folder)
    processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(folder)
