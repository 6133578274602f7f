"""Flax NNX models: AttnRes and MoE transformers.

from routecal.models import ModelConfig, Transformer
model = Transformer(ModelConfig(seq_len=16, token_dim=4, num_classes=10), rngs=nnx.Rngs(0))
out = model(tokens_BxTxP, return_traces=True)   # out.logits, out.aux_loss, out.traces["alpha"]
lm = Decoder(DecoderConfig(vocab_size=259), rngs=nnx.Rngs(0)); lm(ids_BxT).logits  # [B, T, V]
"""

from routecal.models.decoder import Decoder, DecoderConfig, DecoderOutput
from routecal.models.transformer import ModelConfig, ModelOutput, Transformer, make_mlp

__all__ = [
    "Decoder",
    "DecoderConfig",
    "DecoderOutput",
    "ModelConfig",
    "ModelOutput",
    "Transformer",
    "make_mlp",
]
