"""Flax NNX models: AttnRes and MoE transformers."""
