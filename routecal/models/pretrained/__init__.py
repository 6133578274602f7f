"""Import pretrained Hugging Face MoE LMs (OLMoE, Qwen2/3-MoE, Granite, Mixtral, DeepSeek).

    import routecal as rc
    model, info = rc.pretrained.load_hf("/ckpt/OLMoE-1B-7B-0924", dtype="bfloat16", mesh=mesh)
    out = model(ids_BxT, return_traces=True)   # out.logits [B, T, V], out.traces["mlp"]

Modules: `checkpoint` (lazy safetensors reading), `sources` (layout changes), `families` (one table
per family), `sharding` (mesh placement), `loader` (`load_hf`), `memory` (parameter bytes per
device for the published checkpoints), `retrofit` (train only the VMoER routing posterior).
"""

from routecal.models.pretrained.families import FAMILIES, Family
from routecal.models.pretrained.loader import ImportInfo, decoder_config, load_hf, load_tokenizer

__all__ = ["FAMILIES", "Family", "ImportInfo", "decoder_config", "load_hf", "load_tokenizer"]
