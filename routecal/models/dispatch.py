"""Dropless sparse expert dispatch: only the selected (token, expert) pairs go through the experts.

The dense dropless path (`causal.DecoderMoE`, `dispatch="dense"`) runs all E experts on every
token and keeps K of them: E / K times the routed FLOPs (8x for OLMoE, 64 / 6 ~ 10.7x for
DeepSeek-V2-Lite). Here the N * K assignments are sorted by expert (a stable sort, so each
expert's rows stay in token order) and each expert multiplies only its own rows, as in MegaBlocks
(Gale et al. 2023, "block-sparse" dropless MoE) and `jax.lax.ragged_dot` grouped matmuls:

* "sparse_blocks" (CPU): every expert's rows are padded to a multiple of M rows, so each block of
  M rows belongs to one expert; a `lax.scan` over the G <= (N K + E (M - 1)) / M blocks multiplies
  each block by its expert's weights (unused trailing blocks are skipped with `lax.cond`). Shapes
  are static; the padding rows are zeros with gate 0.
* "ragged" (GPU, TPU): `jax.lax.ragged_dot` over the N K sorted rows with the per-expert counts as
  group sizes (no padding). On CPU XLA lowers it to a slow loop (~17x slower than dense), hence
* "auto": "ragged" on gpu / tpu backends, "sparse_blocks" elsewhere.

Outputs equal the dense path's up to float summation order: y_n = sum_k g_nk FFN_{e_nk}(x_n).

Letters: N tokens (batch and time flattened), D width, F expert hidden width, E experts, K experts
per token, A = N K assignments, M rows per block, G blocks, R = G M padded rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
DISPATCH_MODES = ("auto", "dense", "sparse_blocks", "ragged")
FAST_RAGGED_BACKENDS = ("gpu", "cuda", "rocm", "tpu")


def check_dispatch(mode: str, name: str = "dispatch") -> str:
    """Returns `mode` if it is one of `DISPATCH_MODES`, else raises ValueError naming `name`."""
    if mode not in DISPATCH_MODES:
        raise ValueError(f"{name}: unknown {mode!r}; expected one of {DISPATCH_MODES}")
    return mode


def resolve_dispatch(mode: str, backend: str | None = None) -> str:
    """The concrete dispatch of `mode`: "auto" -> "ragged" on GPU/TPU, "sparse_blocks" on CPU."""
    check_dispatch(mode)
    if mode != "auto":
        return mode
    backend = backend or jax.default_backend()
    return "ragged" if backend in FAST_RAGGED_BACKENDS else "sparse_blocks"


class ExpertWeights(NamedTuple):
    """The stacked weights of E expert MLPs (already cast to the compute dtype).

    SwiGLU experts: down(silu(x W_gate) * (x W_in)); GELU experts: gelu(x W_in + b_in) W_out.
    """

    w_in_ExDxF: Array
    w_out_ExFxD: Array
    w_gate_ExDxF: Array | None = None
    b_in_ExF: Array | None = None


def _ffn(x_RxD: Array, w: ExpertWeights, mm: Callable[[Array, Array], Array], b_F: Array) -> Array:
    """One expert MLP on rows with the grouped matmul `mm(x, W_ExIxO)`; `b_F` the GELU bias rows."""
    h = mm(x_RxD, w.w_in_ExDxF)
    if w.w_gate_ExDxF is not None:
        h = jax.nn.silu(mm(x_RxD, w.w_gate_ExDxF)) * h
    else:
        h = jax.nn.gelu(h + b_F)
    return mm(h, w.w_out_ExFxD)


class Assignments(NamedTuple):
    """The N K (token, expert) pairs sorted by expert (stable: token order within an expert).

    Attributes:
      order_A: sorted position -> flat assignment index n K + k.
      token_A, expert_A: token and expert of each sorted assignment.
      counts_E: assignments per expert.
    """

    order_A: Array
    token_A: Array
    expert_A: Array
    counts_E: Array


def sort_assignments(experts_NxK: Array, n_experts: int) -> Assignments:
    """Sorts the flattened assignments by expert (`jnp.argsort(stable=True)`)."""
    k = experts_NxK.shape[1]
    e_A = experts_NxK.reshape(-1).astype(jnp.int32)
    order_A = jnp.argsort(e_A, stable=True)
    counts_E = jnp.bincount(e_A, length=n_experts)
    return Assignments(order_A, order_A // k, e_A[order_A], counts_E)


def default_block_rows(n_assignments: int, n_experts: int) -> int:
    """M: the power of two nearest A / (2 E), clipped to [8, 128] (padding <= E (M - 1) rows,
    about half of that on average, against A useful rows)."""
    target = max(n_assignments / (2 * n_experts), 1.0)
    m = 1 << max(0, round(math.log2(target)))
    return int(min(max(m, 8), 128))


def block_layout(s: Assignments, block_rows: int) -> tuple[Array, Array, Array, int]:
    """Rows of the padded, expert-blocked buffer.

    Returns:
      row_A: padded row of each sorted assignment; block_expert_G: the expert of each block;
      used_G: whether a block holds any row; G: the static number of blocks,
      floor((A + E (M - 1)) / M) >= sum_e ceil(count_e / M).
    """
    a, e, m = s.expert_A.shape[0], s.counts_E.shape[0], block_rows
    n_blocks = (a + e * (m - 1)) // m
    padded_E = (s.counts_E + m - 1) // m * m
    start_E = jnp.cumsum(s.counts_E) - s.counts_E
    end_padded_E = jnp.cumsum(padded_E)
    pstart_E = end_padded_E - padded_E
    row_A = pstart_E[s.expert_A] + jnp.arange(a) - start_E[s.expert_A]
    block_start_G = jnp.arange(n_blocks) * m
    block_expert_G = jnp.searchsorted(end_padded_E, block_start_G, side="right")
    used_G = block_start_G < end_padded_E[-1]
    return row_A, jnp.minimum(block_expert_G, e - 1), used_G, n_blocks


def _combine(y_sorted_AxD: Array, s: Assignments, gates_NxK: Array) -> Array:
    """y_n = sum_k g_nk y_(n,k): unsort the rows, weight by their gates in float32, sum over K."""
    n, k = gates_NxK.shape
    inverse_A = jnp.argsort(s.order_A)
    y_NxKxD = y_sorted_AxD.astype(jnp.float32)[inverse_A].reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y_NxKxD, gates_NxK.astype(jnp.float32))


def sparse_blocks(
    x_NxD: Array, experts_NxK: Array, gates_NxK: Array, w: ExpertWeights, block_rows: int = 0
) -> Array:
    """Dropless MoE output [N, D] (float32) by blocks of M rows of one expert (CPU path).

    Args:
      x_NxD: token inputs (compute dtype). experts_NxK / gates_NxK: the router's choices.
      w: the experts' weights. block_rows: M (0 = `default_block_rows`).
    """
    n, d = x_NxD.shape
    e = w.w_in_ExDxF.shape[0]
    s = sort_assignments(experts_NxK, e)
    m = block_rows or default_block_rows(s.expert_A.shape[0], e)
    row_A, block_expert_G, used_G, n_blocks = block_layout(s, m)
    row_token_R = jnp.full((n_blocks * m,), n, jnp.int32).at[row_A].set(s.token_A)
    x_pad = jnp.concatenate([x_NxD, jnp.zeros((1, d), x_NxD.dtype)], axis=0)
    xs_GxMxD = x_pad[row_token_R].reshape(n_blocks, m, d)

    def block(carry: None, inp: tuple[Array, Array, Array]) -> tuple[None, Array]:
        x_MxD, ex, used = inp

        def run() -> Array:
            def mm(x: Array, w_ExIxO: Array) -> Array:
                return x @ w_ExIxO[ex]

            b = None if w.b_in_ExF is None else w.b_in_ExF[ex][None, :]
            return _ffn(x_MxD, w, mm, b)

        return carry, jax.lax.cond(used, run, lambda: jnp.zeros_like(x_MxD))

    _, ys_GxMxD = jax.lax.scan(block, None, (xs_GxMxD, block_expert_G, used_G))
    return _combine(ys_GxMxD.reshape(n_blocks * m, d)[row_A], s, gates_NxK)


def ragged(x_NxD: Array, experts_NxK: Array, gates_NxK: Array, w: ExpertWeights) -> Array:
    """Dropless MoE output [N, D] (float32) by `jax.lax.ragged_dot` grouped matmuls (GPU/TPU)."""
    e = w.w_in_ExDxF.shape[0]
    s = sort_assignments(experts_NxK, e)
    group_sizes = s.counts_E.astype(jnp.int32)

    def mm(x: Array, w_ExIxO: Array) -> Array:
        return jax.lax.ragged_dot(x, w_ExIxO, group_sizes)

    b = None if w.b_in_ExF is None else w.b_in_ExF[s.expert_A]
    return _combine(_ffn(x_NxD[s.token_A], w, mm, b), s, gates_NxK)


def dense(x_NxD: Array, experts_NxK: Array, gates_NxK: Array, w: ExpertWeights) -> Array:
    """Reference dropless output [N, D] (float32): all E experts on every token, K kept."""
    e = w.w_in_ExDxF.shape[0]

    def mm(x: Array, w_ExIxO: Array) -> Array:
        return jnp.einsum("eni,eio->eno", x, w_ExIxO)

    b = None if w.b_in_ExF is None else w.b_in_ExF[:, None, :]
    y_ExNxD = _ffn(jnp.broadcast_to(x_NxD, (e, *x_NxD.shape)), w, mm, b).astype(jnp.float32)
    combine_NxE = jnp.sum(
        jax.nn.one_hot(experts_NxK, e, dtype=jnp.float32) * gates_NxK[..., None].astype(jnp.float32),
        axis=1,
    )
    return jnp.einsum("end,ne->nd", y_ExNxD, combine_NxE)


DISPATCH_FNS = {"dense": dense, "sparse_blocks": sparse_blocks, "ragged": ragged}


def dropless_moe(
    x_NxD: Array, experts_NxK: Array, gates_NxK: Array, w: ExpertWeights, mode: str = "auto"
) -> Array:
    """y_n = sum_k g_nk FFN_{e_nk}(x_n) [N, D] float32, computed by the dispatch `mode`."""
    return DISPATCH_FNS[resolve_dispatch(mode)](x_NxD, experts_NxK, gates_NxK, w)
