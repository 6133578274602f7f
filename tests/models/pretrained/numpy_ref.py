"""A numpy forward pass of the HF MoE families (not DeepSeek-V2's MLA), from checkpoint tensors.

Written from the PyTorch reference code (transformers 5.x `modeling_olmoe.py`,
`modeling_qwen2_moe.py`, `modeling_granitemoe.py`, `modeling_mixtral.py`, `modeling_qwen3_moe.py`;
DeepSeek-MoE v1: the remote `modeling_deepseek.py` of deepseek-ai/deepseek-moe-16b-base, whose
`DeepseekMoE` adds the ungated `shared_experts` MLP to the softmax-greedy top-k experts and whose
layer i is MoE iff i >= first_k_dense_replace and i % moe_layer_freq == 0), on the checkpoint's own names and [out, in]
layouts, sharing nothing with routecal's loader: an independent reference the CI can run without
torch. float64 throughout.
"""

from __future__ import annotations

import numpy as np


def _rms(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rope(x, theta):  # x [T, N, K]; HF rotate_half with cos/sin of cat(freqs, freqs)
    t, _, k = x.shape
    inv = 1.0 / theta ** (np.arange(0, k, 2) / k)
    ang = np.arange(t)[:, None] * inv[None]
    cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
    rot = np.concatenate([-x[..., k // 2:], x[..., : k // 2]], axis=-1)
    return x * cos[:, None] + rot * sin[:, None]


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _swiglu(x, gate_w, up_w, down_w):
    return (_silu(x @ gate_w.T) * (x @ up_w.T)) @ down_w.T


def forward(cfg: dict, t: dict, ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Logits [T, V] and router logits (one [T, E] per MoE layer) of one sequence `ids` [T]."""
    t = {k: np.asarray(v, np.float64) for k, v in t.items()}
    mt, eps = cfg["model_type"], cfg["rms_norm_eps"]
    d, h = cfg["hidden_size"], cfg["num_attention_heads"]
    g = cfg.get("num_key_value_heads") or h
    k = cfg.get("head_dim") or d // h
    top = cfg["num_experts_per_tok"]
    emb_mult = cfg.get("embedding_multiplier", 1.0)
    res_mult = cfg.get("residual_multiplier", 1.0)
    scale = cfg.get("attention_multiplier", k ** -0.5) if mt == "granitemoe" else k ** -0.5
    x = t["model.embed_tokens.weight"][ids] * emb_mult
    n = len(ids)
    routers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(name, y, p=p):
            out = y @ t[p + name + ".weight"].T
            return out + t[p + name + ".bias"] if p + name + ".bias" in t else out

        a = _rms(x, t[p + "input_layernorm.weight"], eps)
        q, kk, v = lin("self_attn.q_proj", a), lin("self_attn.k_proj", a), lin("self_attn.v_proj", a)
        if mt == "olmoe":  # RMSNorm over the whole projection, before the heads are split
            q = _rms(q, t[p + "self_attn.q_norm.weight"], eps)
            kk = _rms(kk, t[p + "self_attn.k_norm.weight"], eps)
        q, kk = q.reshape(n, h, k), kk.reshape(n, g, k)
        if mt == "qwen3_moe":  # Qwen3: RMSNorm over each head's features
            q = _rms(q, t[p + "self_attn.q_norm.weight"], eps)
            kk = _rms(kk, t[p + "self_attn.k_norm.weight"], eps)
        q = _rope(q, cfg["rope_theta"])
        kk = np.repeat(_rope(kk, cfg["rope_theta"]), h // g, axis=1)
        v = np.repeat(v.reshape(n, g, k), h // g, axis=1)
        s = np.einsum("thk,shk->hts", q, kk) * scale
        s = np.where(np.tril(np.ones((n, n), bool))[None], s, -np.inf)
        w = np.exp(s - s.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("hts,shk->thk", w, v).reshape(n, h * k)
        x = x + res_mult * lin("self_attn.o_proj", o)

        m = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
        if mt == "granitemoe":
            logits = m @ t[p + "block_sparse_moe.router.layer.weight"].T
            sel = np.argsort(-logits, axis=-1)[:, :top]
            zl = np.take_along_axis(logits, sel, -1)
            gates = np.exp(zl - zl.max(-1, keepdims=True))
            gates /= gates.sum(-1, keepdims=True)  # softmax over the top-k logits
            win = t[p + "block_sparse_moe.input_linear.weight"]  # [E, 2F, D]
            wout = t[p + "block_sparse_moe.output_linear.weight"]  # [E, D, F]
            f = win.shape[1] // 2

            def expert(e, y, win=win, wout=wout, f=f):
                hh = y @ win[e].T
                return (_silu(hh[..., :f]) * hh[..., f:]) @ wout[e].T
        elif mt == "mixtral":  # softmax over all experts, top-k, renormalised; w1 gate, w3 up
            pm = p + "block_sparse_moe."
            logits = m @ t[pm + "gate.weight"].T
            sel = np.argsort(-logits, axis=-1)[:, :top]
            zl = np.take_along_axis(logits, sel, -1)
            gates = np.exp(zl - zl.max(-1, keepdims=True))
            gates /= gates.sum(-1, keepdims=True)

            def expert(e, y, pm=pm):
                pe = pm + f"experts.{e}."
                return _swiglu(y, t[pe + "w1.weight"], t[pe + "w3.weight"], t[pe + "w2.weight"])
        elif p + "mlp.gate.weight" not in t:  # a dense layer (Qwen's mlp_only_layers)
            x = x + res_mult * _swiglu(m, t[p + "mlp.gate_proj.weight"],
                                       t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"])
            continue
        else:
            logits = m @ t[p + "mlp.gate.weight"].T
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)  # softmax over all experts, then top-k
            sel = np.argsort(-probs, axis=-1)[:, :top]
            gates = np.take_along_axis(probs, sel, -1)
            if cfg.get("norm_topk_prob"):
                gates /= gates.sum(-1, keepdims=True)

            def expert(e, y, p=p):
                pe = p + f"mlp.experts.{e}."
                return _swiglu(y, t[pe + "gate_proj.weight"], t[pe + "up_proj.weight"],
                               t[pe + "down_proj.weight"])
        routers.append(logits)
        y = np.zeros_like(m)
        for tok in range(n):
            for j in range(top):
                y[tok] += gates[tok, j] * expert(sel[tok, j], m[tok])
        if p + "mlp.shared_expert_gate.weight" in t:  # Qwen: sigmoid-gated shared expert
            sg = 1.0 / (1.0 + np.exp(-(m @ t[p + "mlp.shared_expert_gate.weight"].T)))
            y += sg * _swiglu(m, t[p + "mlp.shared_expert.gate_proj.weight"],
                              t[p + "mlp.shared_expert.up_proj.weight"],
                              t[p + "mlp.shared_expert.down_proj.weight"])
        if p + "mlp.shared_experts.gate_proj.weight" in t:  # DeepSeek: ungated, always on
            y += _swiglu(m, t[p + "mlp.shared_experts.gate_proj.weight"],
                         t[p + "mlp.shared_experts.up_proj.weight"],
                         t[p + "mlp.shared_experts.down_proj.weight"])
        x = x + res_mult * y
    x = _rms(x, t["model.norm.weight"], eps)
    head = t.get("lm_head.weight", t["model.embed_tokens.weight"])
    return x @ head.T / cfg.get("logits_scaling", 1.0), routers
