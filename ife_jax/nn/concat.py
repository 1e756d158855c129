"""Channel concatenations with IFE's copies left unmaterialised.

IFE appends copies of some channels of a feature map, ``[x, x[..., indices[b]]]``, and in
UNet the next layer is a convolution of that concatenation (with the upsampled features). A
convolution over copied channels equals a convolution over the original channels with the
copies' kernel rows added onto the rows of the channels they copy, one kernel per sample:
``conv([x, x[idx_b]], W) = conv(x, W_x + scatter_add(W_copy, idx_b))``. :class:`ChannelConcat`
describes such an input without building it; :class:`ife_jax.nn.conv.Conv` reads it (on CPU
through that folded kernel, elsewhere by building the concatenation), and
:meth:`ChannelConcat.materialize` builds it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ife_jax.ops.selection import gather_channels


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ChannelConcat:
    """The channel concatenation of whole arrays and per-sample copies of their channels.

    Segment ``s`` of the concatenation is ``arrays[sources[s]]`` when ``indices[s]`` is None,
    else its channels ``indices[s][b]`` for sample ``b`` (``gather_channels``).

    Attributes:
      arrays: the distinct arrays, (B, ..., C_i), one dtype, one leading shape.
      indices: per segment, None or a (B, k_s) int32 array of channel indices.
      sources: per segment, the index of its array (static).
    """

    arrays: tuple[jax.Array, ...]
    indices: tuple[jax.Array | None, ...]
    sources: tuple[int, ...] = dataclasses.field(metadata=dict(static=True))

    @classmethod
    def with_copies(cls, x: jax.Array, indices: jax.Array, *, raw_first: bool = True):
        """``[x, x[..., indices[b]]]`` (``raw_first``) or ``[x[..., indices[b]], x]``."""
        segment = (None, indices) if raw_first else (indices, None)
        return cls(arrays=(x,), indices=segment, sources=(0, 0))

    @property
    def shape(self) -> tuple[int, ...]:
        """The concatenation's shape, (B, ..., channels)."""
        return (*self.arrays[0].shape[:-1], self.channels)

    @property
    def dtype(self):
        return self.arrays[0].dtype

    @property
    def ndim(self) -> int:
        return self.arrays[0].ndim

    @property
    def channels(self) -> int:
        """Channels of the concatenation."""
        return sum(self._widths())

    def _widths(self) -> list[int]:
        return [
            self.arrays[a].shape[-1] if i is None else i.shape[-1]
            for a, i in zip(self.sources, self.indices, strict=True)
        ]

    def __array__(self, dtype=None, copy=None):
        """NumPy sees the built concatenation (e.g. a captured IFE output)."""
        out = np.asarray(self.materialize())
        return out if dtype is None else out.astype(dtype)

    def materialize(self) -> jax.Array:
        """The concatenation as one array."""
        return jnp.concatenate(
            [
                self.arrays[a] if i is None else gather_channels(self.arrays[a], i)
                for a, i in zip(self.sources, self.indices, strict=True)
            ],
            axis=-1,
        )

    def distinct(self) -> tuple[jax.Array, jax.Array]:
        """``(x, source)``: the arrays concatenated once each, (B, ..., C_x), and the
        (B, channels) int32 map such that channel ``j`` of the concatenation is channel
        ``source[b, j]`` of ``x`` for sample ``b``."""
        offsets, total = [], 0
        for a in self.arrays:
            offsets.append(total)
            total += a.shape[-1]
        b = self.arrays[0].shape[0]
        rows = []
        for a, i in zip(self.sources, self.indices, strict=True):
            if i is None:
                base = jnp.arange(self.arrays[a].shape[-1], dtype=jnp.int32)
                rows.append(jnp.broadcast_to(base + offsets[a], (b, base.shape[0])))
            else:
                rows.append(i.astype(jnp.int32) + offsets[a])
        x = self.arrays[0] if len(self.arrays) == 1 else jnp.concatenate(self.arrays, axis=-1)
        return x, jnp.concatenate(rows, axis=-1)


def concat_channels(*items: jax.Array | ChannelConcat) -> jax.Array | ChannelConcat:
    """``jnp.concatenate(items, axis=-1)`` where every item is an array, else the
    :class:`ChannelConcat` of them all (arrays and concatenations, in order)."""
    if not any(isinstance(item, ChannelConcat) for item in items):
        return jnp.concatenate(items, axis=-1)
    arrays, indices, sources = [], [], []
    for item in items:
        if isinstance(item, ChannelConcat):
            base = len(arrays)
            arrays.extend(item.arrays)
            indices.extend(item.indices)
            sources.extend(base + s for s in item.sources)
        else:
            sources.append(len(arrays))
            arrays.append(item)
            indices.append(None)
    leading = {a.shape[:-1] for a in arrays}
    dtypes = {a.dtype for a in arrays}
    if len(leading) != 1 or len(dtypes) != 1:
        raise ValueError(
            "concat_channels: the parts must share their leading shape and dtype; got "
            + ", ".join(f"{a.shape} {a.dtype}" for a in arrays)
        )
    return ChannelConcat(arrays=tuple(arrays), indices=tuple(indices), sources=tuple(sources))
