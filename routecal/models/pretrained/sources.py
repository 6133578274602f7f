"""Where each routecal parameter comes from in a Hugging Face checkpoint, and how it is laid out.

A `Source` names the checkpoint tensor(s) behind one routecal parameter and the layout change
(`kind`) between them. `read(ckpt, index)` returns any slice of the routecal-layout parameter while
reading only the matching part of the checkpoint, so `jax.make_array_from_callback` can fill each
device's shard straight from disk.

Kinds (PyTorch `nn.Linear.weight` is [out, in]; routecal kernels are [in, out]):
  * "copy":    same layout (embeddings [V, D], norm scales [D], biases).
  * "T":       swap the last two axes: [out, in] -> [in, out]; [E, D, F] -> [E, F, D] (Granite's
               fused `output_linear` [E, D, F] to `w_out_ExFxD`).
  * "stack_T": one [out, in] tensor per expert (`...experts.{j}...`), transposed and stacked along
               a new leading expert axis: E x [F, D] -> [E, D, F] (OLMoE, Qwen2-MoE).
  * "half0_T", "half1_T": Granite's fused `input_linear` [E, 2F, D]; the first (gate) or second (up)
               half of the 2F axis, transposed to [E, D, F] (HF: `gate, up = x W^T .chunk(2)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from routecal.models.pretrained.checkpoint import Checkpoint, _normalise

KINDS = ("copy", "T", "stack_T", "half0_T", "half1_T")


def _swap_last(s: tuple[slice, ...]) -> tuple[slice, ...]:
    return (*s[:-2], s[-1], s[-2]) if len(s) >= 2 else s


@dataclasses.dataclass(frozen=True)
class Source:
    """Checkpoint tensor name(s) of one routecal parameter and the layout change.

    Attributes:
      names: one tensor name, or (kind "stack_T") one per expert in expert order.
      kind: one of `KINDS`.
    """

    names: tuple[str, ...]
    kind: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: unknown {self.kind!r}; expected one of {KINDS}")
        if not self.names or (self.kind != "stack_T" and len(self.names) != 1):
            raise ValueError(f"names: kind {self.kind!r} needs exactly one name, got {self.names}")

    def shape(self, ckpt: Checkpoint) -> tuple[int, ...]:
        """Shape of the parameter in routecal layout (headers only); checks the experts agree."""
        first = ckpt.shape(self.names[0])
        if self.kind == "copy":
            return first
        if self.kind == "T":
            _rank_at_least(first, 2, self.names[0])
            return (*first[:-2], first[-1], first[-2])
        if self.kind == "stack_T":
            _rank_at_least(first, 2, self.names[0])
            for n in self.names[1:]:
                if ckpt.shape(n) != first:
                    raise ValueError(
                        f"checkpoint: tensor {n!r} has shape {list(ckpt.shape(n))}, expected "
                        f"{list(first)} like {self.names[0]!r}"
                    )
            return (len(self.names), first[1], first[0])
        # half0_T / half1_T: [E, 2F, D] -> [E, D, F]
        if len(first) != 3 or first[1] % 2:
            raise ValueError(
                f"checkpoint: tensor {self.names[0]!r} should be a fused [E, 2F, D] expert weight, "
                f"got shape {list(first)}"
            )
        return (first[0], first[2], first[1] // 2)

    def read(self, ckpt: Checkpoint, index: Sequence[slice] | None = None) -> np.ndarray:
        """The routecal-layout parameter, or its `index` slice, read from the checkpoint."""
        idx = _normalise(index, self.shape(ckpt))
        name = self.names[0]
        if self.kind == "copy":
            return ckpt.read(name, idx)
        if self.kind == "T":
            return np.swapaxes(ckpt.read(name, _swap_last(idx)), -1, -2)
        if self.kind == "stack_T":
            experts = range(len(self.names))[idx[0]]
            parts = [ckpt.read(self.names[j], _swap_last(idx[1:])).T for j in experts]
            if not parts:
                return np.zeros((0, *(s.stop - s.start for s in idx[1:])), np.float32)
            return np.stack(parts)
        f = ckpt.shape(name)[1] // 2
        off = 0 if self.kind == "half0_T" else f
        e_s, d_s, f_s = idx
        raw = ckpt.read(name, (e_s, slice(off + f_s.start, off + f_s.stop), d_s))
        return np.swapaxes(raw, -1, -2)


def _rank_at_least(shape: tuple[int, ...], rank: int, name: str) -> None:
    if len(shape) < rank:
        raise ValueError(
            f"checkpoint: tensor {name!r} should have rank >= {rank}, got shape {list(shape)}"
        )
