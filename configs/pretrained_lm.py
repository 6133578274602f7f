"""An imported Hugging Face MoE checkpoint as a model of the LM study (the `hf` source).

Not trained: `routecal.training.token_predict.predict_pretrained` imports `model.checkpoint` with `load_hf` and writes
its token predictions on the text dataset of `data` (as `configs/lm_stdlib.py`'s: the embedded
stdlib corpus; set `data.tokenizer` to the checkpoint's tokenizer.json for a real model, whose
vocabulary must cover it). Used by `configs/study_pretrained.py`; variants: `checkpoint=DIR`
(or `random:olmoe`, a tiny random checkpoint written into the run directory), `quick`.
"""

import common
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = common.parse_arg(arg, checkpoint="", quick=False)
    cfg = ml_collections.ConfigDict()
    cfg.task = "lm"
    cfg.seed = 0
    cfg.model = ml_collections.ConfigDict()
    cfg.model.checkpoint = v.checkpoint  # a checkpoint directory, or "random:<model_type>"
    cfg.model.dtype = "float32"  # or "bfloat16" (router and logits stay float32)
    cfg.model.dispatch = "auto"  # dropless experts: auto / dense / sparse_blocks / ragged

    cfg.data = ml_collections.ConfigDict()
    cfg.data.name = "stdlib"
    cfg.data.seed = 0
    cfg.data.seq_len = 256
    cfg.data.tokenizer = "bytes"  # or the checkpoint's tokenizer.json
    cfg.data.calib_fraction = 0.1
    cfg.data.test_fraction = 0.1
    cfg.data.data_dir = ml_collections.config_dict.placeholder(str)
    cfg.data.max_bytes = 256_000
    cfg.data.max_train_bytes = 1  # nothing is trained: tokenise one byte of train text
    if v.quick:
        cfg.data.seq_len = 64
        cfg.data.max_bytes = 12_000
    return cfg
