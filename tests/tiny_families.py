"""Tiny configurations of each open_clip family's real architecture, for the default test run.

Each keeps what makes its family different (the ResNet attention pool, ConvNeXt blocks, MobileCLIP's
MobileOne/RepMixer branches to fold, EVA's rotary embeddings and SwiGLU, SigLIP's MAP pooling, logit
bias and T5-style tokenizer, CoCa's attentional pool) at widths of 16 to 64 and one or two blocks per
stage, as the Hugging Face transformers tests shrink their models. The timm towers are timm's own
model classes, registered under new names with smaller arguments; the open_clip configs in
``tiny_configs/`` name them. Registration is per process: ``register()`` from conftest.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

CONFIGS = Path(__file__).parent / "tiny_configs"
IMAGE_SIZE = 64
_registered = False


def _timm_models() -> None:
    from timm.models import register_model
    from timm.models.convnext import convnext_tiny
    from timm.models.eva import eva02_base_patch16_clip_224
    from timm.models.fastvit import RepConditionalPosEnc, fastvit_mci1
    from timm.models.vision_transformer import vit_base_patch16_siglip_224

    @register_model
    def rada_tiny_convnext(pretrained=False, **kwargs):
        return convnext_tiny(pretrained, **dict(dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 48)), **kwargs))

    @register_model
    def rada_tiny_fastvit_mci(pretrained=False, **kwargs):
        # RepMixer stages, then an attention stage with a conditional positional encoding, as MCi1 has.
        args = dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64), mlp_ratios=(2, 2, 2, 2),
                    pos_embs=(None, None, None, partial(RepConditionalPosEnc, spatial_shape=(3, 3))))
        return fastvit_mci1(pretrained, **dict(args, **kwargs))

    @register_model
    def rada_tiny_eva02(pretrained=False, **kwargs):
        args = dict(img_size=IMAGE_SIZE, embed_dim=64, depth=2, num_heads=2, ref_feat_shape=(4, 4))
        return eva02_base_patch16_clip_224(pretrained, **dict(args, **kwargs))

    @register_model
    def rada_tiny_siglip_vit(pretrained=False, **kwargs):
        args = dict(img_size=IMAGE_SIZE, embed_dim=64, depth=2, num_heads=2)
        return vit_base_patch16_siglip_224(pretrained, **dict(args, **kwargs))


def register() -> None:
    """Makes the tiny family configs known to open_clip (and their timm towers to timm), once."""
    global _registered
    if _registered:
        return
    import open_clip

    from rada_export.clip import register_own_configs

    _timm_models()
    register_own_configs()  # the package's own tiny configs (rada-tiny-ViT) beside these
    open_clip.add_model_config(CONFIGS)
    _registered = True
