"""MLLM context prompting (paper §3.1): explicit prompt P_exp and meta-token context C_ref for an item."""

from icg.context.cache import CachedContext, ContextCache, context_key, image_digest
from icg.context.encoder import SYSTEM_INSTRUCTION, ContextBatch, ContextEncoder, ContextOutput
from icg.context.meta_tokens import MetaTokens
from icg.context.objective import TRANSFORMS, meta_token_loss, transform_images
from icg.context.tiny import build_tiny_context_encoder

__all__ = [
    "SYSTEM_INSTRUCTION",
    "TRANSFORMS",
    "CachedContext",
    "ContextBatch",
    "ContextCache",
    "ContextEncoder",
    "ContextOutput",
    "MetaTokens",
    "build_tiny_context_encoder",
    "context_key",
    "image_digest",
    "meta_token_loss",
    "transform_images",
]
