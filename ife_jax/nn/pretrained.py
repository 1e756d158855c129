"""Load torchvision-layout ResNet weights onto the Flax backbone (and write them back).

Nothing is downloaded: the user supplies a state dict they already have, as

* ``.safetensors`` (read and written here with NumPy alone; the format is an 8-byte
  little-endian header length, a JSON header of names, dtypes, shapes and byte offsets, and
  the raw little-endian tensors),
* ``.npz`` (``np.savez(path, **state_dict)``), or
* ``.pth`` / ``.pt`` (only when PyTorch happens to be installed; it is not a dependency).

Names map as torchvision's ResNet to :class:`ife_jax.nn.resnet.ResNet`:
``conv1.weight`` (OIHW) -> ``params/conv1/kernel`` (HWIO); ``bn1.weight``/``bias`` ->
``params/bn1/scale``/``bias``; ``bn1.running_mean``/``running_var`` ->
``batch_stats/bn1/mean``/``var``; ``layerX.Y.*`` -> ``layerX_Y/*``;
``layerX.Y.downsample.0`` / ``.1`` -> ``layerX_Y/downsample_conv`` / ``downsample_bn``.
``num_batches_tracked`` and the classifier ``fc.*`` are ignored.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("bool"),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

#: State-dict entries that have no counterpart in the backbone and are skipped silently.
DEFAULT_IGNORE = (r"(^|\.)num_batches_tracked$", r"^fc\.")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read every tensor of a ``.safetensors`` file into NumPy arrays (no extra dependency)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: too short to be a safetensors file.")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} exceeds the file size {len(raw)}.")
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']!r}.")
        begin, end = info["data_offsets"]
        dtype = _ST_DTYPES[info["dtype"]]
        arr = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
        out[name] = arr.copy()
    return out


def write_safetensors(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> None:
    """Write ``{name: array}`` as a ``.safetensors`` file readable by any safetensors reader."""
    header, chunks, offset = {}, [], 0
    for name in sorted(state_dict):
        arr = np.asarray(state_dict[name])
        key = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if key not in _ST_NAMES:
            raise ValueError(f"tensor {name!r} has unsupported dtype {arr.dtype}.")
        buf = np.ascontiguousarray(arr, dtype=key).tobytes()
        header[name] = {
            "dtype": _ST_NAMES[key],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(buf)],
        }
        chunks.append(buf)
        offset += len(buf)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for buf in chunks:
            f.write(buf)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a state dict from ``.safetensors``, ``.npz`` or (with PyTorch installed) ``.pth``.

    A ``.pth`` holding ``{"state_dict": ...}`` or ``{"model": ...}`` is unwrapped.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        return read_safetensors(path)
    if ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    if ext in (".pth", ".pt", ".bin"):
        try:
            import torch  # optional, never a dependency
        except ImportError as err:
            raise ValueError(
                f"{path}: reading PyTorch files needs torch, which is not installed. Convert it "
                "once where torch is available: `from safetensors.torch import save_file; "
                "save_file(torch.load(p), 'resnet50.safetensors')`, or "
                "`np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()})`."
            ) from err
        sd = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
        return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
                for k, v in sd.items()}  # fmt: skip
    raise ValueError(f"{path}: unknown state-dict format {ext!r} (use .safetensors, .npz, .pth).")


def _torch_name(
    path: Sequence[str],
    collection: str,
    *,
    downsample: tuple[str, str] = ("downsample.0", "downsample.1"),
    numbered: str = r"layer\d+",
) -> str:
    """Flax path inside the backbone -> torchvision state-dict name.

    ``downsample`` names the shortcut's convolution and BatchNorm; a Flax module named
    ``<numbered>_<i>`` (``layer1_0``) is the ``<numbered>.<i>`` of the state dict.
    """
    *modules, leaf = path
    parts = []
    for m in modules:
        if m == "downsample_conv":
            parts.append(downsample[0])
        elif m == "downsample_bn":
            parts.append(downsample[1])
        else:
            parts.append(re.sub(rf"^({numbered})_(\d+)$", r"\1.\2", m))
    if collection == "batch_stats":
        leaf = {"mean": "running_mean", "var": "running_var"}[leaf]
    else:
        leaf = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    return ".".join([*parts, leaf])


def _subtree(tree: Mapping, prefix: Sequence[str], what: str) -> Mapping:
    for p in prefix:
        if p not in tree:
            raise ValueError(f"no {'/'.join(prefix)!r} in the model's {what}; check `prefix`.")
        tree = tree[p]
    return tree


def _leaves(tree: Mapping, path: tuple[str, ...] = ()):
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _leaves(v, (*path, k))
        else:
            yield (*path, k), v


def _to_flax(arr: np.ndarray, leaf: str) -> np.ndarray:
    return np.transpose(arr, (2, 3, 1, 0)) if leaf == "kernel" else arr


def _to_torch(arr: np.ndarray, leaf: str) -> np.ndarray:
    return np.transpose(arr, (3, 2, 0, 1)) if leaf == "kernel" else arr


def resnet_to_state_dict(
    variables: Mapping, *, prefix: Sequence[str] = ("backbone",)
) -> dict[str, np.ndarray]:
    """The backbone under ``prefix`` as a torchvision-layout state dict of NumPy arrays.

    Args:
      variables: ``{"params": ..., "batch_stats": ...}`` of a model holding a
        :class:`~ife_jax.nn.resnet.ResNet` at ``prefix`` (``()`` for a bare ResNet).

    Returns:
      ``{name: array}``, convolution weights OIHW, in float32 unless the parameters are not.
    """
    out = {}
    for collection in ("params", "batch_stats"):
        for path, value in _leaves(_subtree(variables[collection], prefix, collection)):
            out[_torch_name(path, collection)] = _to_torch(np.asarray(value), path[-1])
    return out


def load_resnet_state_dict(
    variables: Mapping,
    state_dict: Mapping[str, Any],
    *,
    prefix: Sequence[str] = ("backbone",),
    ignore: Sequence[str] = DEFAULT_IGNORE,
    strict: bool = True,
) -> dict:
    """Return ``variables`` with the backbone at ``prefix`` replaced by a torchvision state dict.

    Convolution weights are transposed OIHW -> HWIO; BatchNorm running statistics go to
    ``batch_stats``. When the model takes 1 input channel and the state dict's ``conv1`` has 3
    (ImageNet RGB), the RGB filters are summed, which is exact for grey images replicated to RGB.
    Values are cast to the dtype of the parameters they replace. Nothing else is changed.

    Args:
      variables: the model's ``{"params": ..., "batch_stats": ...}`` (e.g. from ``init``).
      state_dict: ``{name: array}`` (NumPy or anything ``np.asarray`` takes).
      prefix: where the ResNet sits in the variables (``("backbone",)`` in DeepLabV3Plus).
      ignore: regular expressions of state-dict names to skip (counters, the classifier).
      strict: raise on missing or unexpected names; shape mismatches always raise.

    Returns:
      A new variables dict (the input is not modified).

    Raises:
      ValueError: listing every missing name, unexpected name and shape mismatch.
    """
    return load_state_dict(
        variables,
        state_dict,
        torch_name=_torch_name,
        stem="conv1.weight",
        network="ResNet",
        prefix=prefix,
        ignore=ignore,
        strict=strict,
    )


def load_state_dict(
    variables: Mapping,
    state_dict: Mapping[str, Any],
    *,
    torch_name: Callable[[Sequence[str], str], str],
    stem: str,
    network: str,
    prefix: Sequence[str],
    ignore: Sequence[str],
    strict: bool,
) -> dict:
    """Copies a PyTorch state dict onto the sub-tree ``prefix`` of ``variables``.

    The shared machinery of the backbone loaders: ``torch_name(path, collection)`` names the
    state-dict entry of each Flax leaf; OIHW kernels become HWIO; the 3-channel ``stem`` kernel
    is summed over RGB for a 1-channel model; values take the dtype of what they replace.

    Raises:
      ValueError: listing every missing name, unexpected name and shape mismatch (missing and
        unexpected names only when ``strict``).
    """
    new = {c: _copy_tree(v) for c, v in variables.items()}
    targets = {}
    for collection in ("params", "batch_stats"):
        sub = _subtree(new[collection], prefix, collection)
        for path, value in _leaves(sub):
            targets[torch_name(path, collection)] = (sub, path, value)

    given = {k for k in state_dict if not any(re.search(p, k) for p in ignore)}
    missing = sorted(set(targets) - given)
    unexpected = sorted(given - set(targets))
    mismatched, updates = [], []
    for name in sorted(given & set(targets)):
        sub, path, old = targets[name]
        arr = np.asarray(state_dict[name])
        if path[-1] == "kernel" and arr.ndim != 4:
            mismatched.append(f"{name}: file {arr.shape} is not a 4-D OIHW weight")
            continue
        arr = _to_flax(arr, path[-1])
        if name == stem and arr.shape[2] == 3 and old.shape[2] == 1:
            arr = arr.sum(axis=2, keepdims=True)
        if arr.shape != tuple(old.shape):
            torch_shape = tuple(np.shape(state_dict[name]))
            expected = tuple(_to_torch(np.empty(old.shape, np.int8), path[-1]).shape)
            mismatched.append(f"{name}: file {torch_shape}, model expects {expected}")
            continue
        updates.append((sub, path, arr.astype(old.dtype)))
    problems = []
    if strict and missing:
        problems.append(f"missing from the state dict ({len(missing)}): {_names(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected in the state dict ({len(unexpected)}): {_names(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    if missing or unexpected:
        problems.append(
            "(a state dict of another depth? names with a prefix such as 'module.'? strip it "
            "from the keys first)"
        )
    if problems and (strict or mismatched):
        raise ValueError(f"cannot load the {network} state dict:\n  " + "\n  ".join(problems))
    for sub, path, arr in updates:
        node = sub
        for p in path[:-1]:
            node = node[p]
        node[path[-1]] = arr
    return new


def load_pretrained_backbone(variables: Mapping, path: str | os.PathLike, **kwargs) -> dict:
    """:func:`read_state_dict` then :func:`load_resnet_state_dict` (same keyword arguments)."""
    return load_resnet_state_dict(variables, read_state_dict(path), **kwargs)


def _names(names: list[str], limit: int = 20) -> str:
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _copy_tree(tree):
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree
