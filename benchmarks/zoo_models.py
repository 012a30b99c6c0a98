"""Hugging Face models for the cost benchmarks, built from their published configs' defaults (random weights,
nothing downloaded): `BertConfig()` is bert-base-uncased's shape."""

from transformers import BertConfig, BertModel


def bert_base():
    return BertModel(BertConfig())


def gpt2():
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(GPT2Config())


def t5_small_encoder():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config())


def swin_tiny():
    from transformers import SwinConfig, SwinModel

    return SwinModel(SwinConfig())


def diffusion_unet():
    """A 425M-parameter latent-diffusion U-Net (diffusers' UNet2DConditionModel, Stable Diffusion's layout at
    70% of its width): the kind of model whose torch.export capture took minutes."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=32, block_out_channels=(224, 448, 896, 896), cross_attention_dim=768)
