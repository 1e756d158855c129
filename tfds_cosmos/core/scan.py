"""Finding image/mask pairs in a DMIS folder and assigning them to splits.

Two layouts are understood (``layout="auto"`` picks one from the files found):

* ``"reference"``: ``<Modality>_<Anatomy>_<id>.png`` with its mask ``<same>_mask.png``, in any
  folder depth. The image id is the file stem; modality and anatomy are its first two
  ``_``-separated tokens.
* ``"tree"``: ``<modality>/<anatomy>/images/<id>.png`` and ``<modality>/<anatomy>/masks/<id>.png``
  (a mask may also be called ``<id>_mask.png``), below any number of parent folders. The image
  id is ``<modality>_<anatomy>_<id>``.

Pairs are matched by image id, never by position in a listing. Every file that cannot be
paired, every duplicate id and every unreadable header becomes a :class:`Problem`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from PIL import Image

from tfds_cosmos.core.images import IMAGE_EXTENSIONS

LAYOUTS = ("auto", "reference", "tree")
SPLITS = ("train", "val", "test")
# Split of Cosmos55k in the paper: 31,548 train / 5,884 validation / 17,591 test.
PAPER_SPLIT_COUNTS = {"train": 31_548, "val": 5_884, "test": 17_591}
SPLIT_FILE_NAMES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


@dataclasses.dataclass(frozen=True)
class Pair:
    """One image and its mask, matched by ``image_id``."""

    image_id: str
    modality: str
    anatomy: str
    image_path: str
    mask_path: str


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something wrong with the input. ``files`` names every file involved."""

    kind: str
    files: tuple[str, ...]
    message: str

    def as_dict(self) -> dict:
        return {"kind": self.kind, "files": list(self.files), "message": self.message}

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}: {', '.join(self.files)}"


@dataclasses.dataclass
class ScanResult:
    """Output of :func:`scan_folder`: valid pairs, problems, and the layout used."""

    pairs: list[Pair]
    problems: list[Problem]
    layout: str


@dataclasses.dataclass(frozen=True)
class _Entry:
    image_id: str
    modality: str
    anatomy: str
    path: str
    is_mask: bool


def _is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _walk_images(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image_file(f))
    return found


def _stem(name: str) -> str:
    return os.path.splitext(os.path.basename(name))[0]


def detect_layout(root: str, files: Sequence[str] | None = None) -> str:
    """``"tree"`` if any image sits in an ``images/`` or ``masks/`` folder two levels below its
    modality folder, else ``"reference"``."""
    files = _walk_images(root) if files is None else files
    for f in files:
        parts = os.path.relpath(f, root).split(os.sep)
        if len(parts) >= 4 and parts[-2].lower() in ("images", "masks"):
            return "tree"
    return "reference"


def _parse(root: str, path: str, layout: str) -> _Entry | Problem:
    rel = os.path.relpath(path, root)
    parts = rel.split(os.sep)
    stem = _stem(path)
    if layout == "reference":
        is_mask = stem.endswith("_mask")
        image_id = stem[: -len("_mask")] if is_mask else stem
        tokens = image_id.split("_")
        if len(tokens) < 3 or not tokens[0] or not tokens[1] or not tokens[2]:
            return Problem(
                "bad_name",
                (path,),
                "file name is not <Modality>_<Anatomy>_<id>[_mask].<ext>",
            )
        return _Entry(image_id, tokens[0], tokens[1], path, is_mask)
    # tree
    if len(parts) < 4 or parts[-2].lower() not in ("images", "masks"):
        return Problem(
            "bad_name",
            (path,),
            "file is not at <modality>/<anatomy>/images|masks/<id>.<ext>",
        )
    modality, anatomy, kind = parts[-4], parts[-3], parts[-2].lower()
    is_mask = kind == "masks"
    if is_mask and stem.endswith("_mask"):
        stem = stem[: -len("_mask")]
    return _Entry(f"{modality}_{anatomy}_{stem}", modality, anatomy, path, is_mask)


def _header_size(path: str) -> tuple[int, int] | str:
    """(width, height) from the file header, or an error message."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        return f"cannot read image header ({e})"


def scan_folder(root: str | os.PathLike, *, layout: str = "auto", check_headers: bool = True):
    """Finds every image/mask pair under ``root``.

    Args:
      root: the folder to scan.
      layout: ``"auto"``, ``"reference"`` or ``"tree"`` (module docstring).
      check_headers: open each file's header to catch non-images and image/mask size mismatches
        before any decoding (truncated pixel data is caught later, while decoding).

    Returns:
      :class:`ScanResult` whose ``pairs`` are sorted by image id and contain no file named in
      ``problems``.

    Raises:
      ValueError: unknown ``layout`` or ``root`` is not a folder.
    """
    root = os.fspath(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not os.path.isdir(root):
        raise ValueError(f"not a folder: {root!r}")
    files = _walk_images(root)
    if layout == "auto":
        layout = detect_layout(root, files)
    problems: list[Problem] = []
    images: dict[str, list[_Entry]] = collections.defaultdict(list)
    masks: dict[str, list[_Entry]] = collections.defaultdict(list)
    for f in files:
        parsed = _parse(root, f, layout)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        else:
            (masks if parsed.is_mask else images)[parsed.image_id].append(parsed)

    pairs: list[Pair] = []
    for image_id in sorted(set(images) | set(masks)):
        imgs, msks = images.get(image_id, []), masks.get(image_id, [])
        files_here = tuple(e.path for e in imgs + msks)
        if len(imgs) > 1 or len(msks) > 1:
            which = "images" if len(imgs) > 1 else "masks"
            problems.append(
                Problem("duplicate_id", files_here, f"id {image_id!r} is used by several {which}")
            )
            continue
        if not msks:
            problems.append(Problem("image_without_mask", files_here, f"no mask for {image_id!r}"))
            continue
        if not imgs:
            problems.append(Problem("mask_without_image", files_here, f"no image for {image_id!r}"))
            continue
        img, msk = imgs[0], msks[0]
        if check_headers:
            sizes = [_header_size(img.path), _header_size(msk.path)]
            bad = [
                (e.path, s) for e, s in zip((img, msk), sizes, strict=True) if isinstance(s, str)
            ]
            if bad:
                for path, msg in bad:
                    problems.append(Problem("unreadable", (path,), msg))
                partner = [e.path for e in (img, msk) if e.path not in {p for p, _ in bad}]
                if partner:
                    problems.append(
                        Problem("partner_unreadable", tuple(partner), "its partner is unreadable")
                    )
                continue
            if sizes[0] != sizes[1]:
                problems.append(
                    Problem(
                        "size_mismatch",
                        files_here,
                        f"image is {sizes[0][0]}x{sizes[0][1]} but mask is "
                        f"{sizes[1][0]}x{sizes[1][1]} (width x height)",
                    )
                )
                continue
        pairs.append(Pair(image_id, img.modality, img.anatomy, img.path, msk.path))
    return ScanResult(pairs, problems, layout)


def _normalise_listed_id(entry: str) -> str:
    entry = entry.strip().replace("\\", "/")
    parts = [p for p in entry.split("/") if p]
    if len(parts) >= 3:
        parts = [p for p in parts if p.lower() not in ("images", "masks")]
    stem = _stem(parts[-1])
    if stem.endswith("_mask"):
        stem = stem[: -len("_mask")]
    if len(parts) >= 3 and not stem.startswith(f"{parts[-3]}_{parts[-2]}_"):
        return f"{parts[-3]}_{parts[-2]}_{stem}"
    return stem


def read_split_files(root: str | os.PathLike) -> dict[str, tuple[str, list[str]]]:
    """Reads ``train.txt`` / ``val.txt`` / ``test.txt`` in ``root`` when present.

    Each line is an image id (``CT_Liver_12``), a file name (``CT_Liver_12.png``) or a tree path
    (``CT/Liver/images/12.png``); blank lines and lines starting with ``#`` are ignored.

    Returns:
      ``{split: (file path, [image ids])}`` for the files that exist.
    """
    out = {}
    for split, name in SPLIT_FILE_NAMES.items():
        path = os.path.join(os.fspath(root), name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                ids = [
                    _normalise_listed_id(line)
                    for line in f
                    if line.strip() and not line.lstrip().startswith("#")
                ]
            out[split] = (path, ids)
    return out


def _hash(image_id: str) -> str:
    return hashlib.sha256(image_id.encode("utf-8")).hexdigest()


def hash_split(
    pairs: Iterable[Pair], *, proportions: Mapping[str, float] | None = None
) -> dict[str, list[Pair]]:
    """Deterministic split stratified by (modality, anatomy).

    Within each (modality, anatomy) group the pairs are ordered by the SHA-256 of their image id
    and cut at the cumulative proportions (rounded), so every group is split in the given
    proportions (default: the paper's 31,548 / 5,884 / 17,591) and the assignment depends only
    on the ids.
    """
    groups: dict[tuple[str, str], list[Pair]] = collections.defaultdict(list)
    for p in pairs:
        groups[(p.modality, p.anatomy)].append(p)
    ordered = [sorted(groups[k], key=lambda p: _hash(p.image_id)) for k in sorted(groups)]
    return _cut_in_order(ordered, proportions or PAPER_SPLIT_COUNTS)


def _cut_in_order(
    groups: Iterable[list[Pair]], counts: Mapping[str, float]
) -> dict[str, list[Pair]]:
    """Cuts each ordered group at the cumulative proportions ``counts`` (rounded; the last split
    takes the rest) and returns each split's pairs sorted by image id."""
    total = float(sum(counts.values()))
    names = list(counts)
    out: dict[str, list[Pair]] = {name: [] for name in names}
    for members in groups:
        n = len(members)
        start, cum = 0, 0.0
        for name in names:
            cum += counts[name] / total
            stop = n if name == names[-1] else int(round(n * cum))
            out[name].extend(members[start:stop])
            start = stop
    return {name: sorted(v, key=lambda p: p.image_id) for name, v in out.items()}


_SLICE_ID = re.compile(r"^(?P<volume>.*?)(?P<slice>\d+)$")
SPLIT_METHODS = ("hash", "slices")


def slice_split(
    pairs: Iterable[Pair], *, proportions: Mapping[str, float] | None = None
) -> dict[str, list[Pair]]:
    """Split by contiguous slice ranges: neighbouring slices of a volume never straddle train and
    test.

    An image id ending in a number is slice ``<number>`` of volume ``<the id before it>``
    (``CT_Kidney_ct-083``: slice 83 of ``CT_Kidney_ct-``). Each volume's slices are sorted by
    number and cut, in that order, into consecutive blocks of the given proportions (default
    the paper's, as :func:`hash_split`): train, then val, then test, so val lies between
    train and test.

    Raises:
      ValueError: naming an image id that does not end in a slice number.
    """
    volumes: dict[str, list[tuple[int, Pair]]] = collections.defaultdict(list)
    for p in pairs:
        m = _SLICE_ID.match(p.image_id)
        if m is None:
            raise ValueError(
                f"image id {p.image_id!r} does not end in a slice number; a split by slice "
                "ranges needs ids like <Modality>_<Anatomy>_<volume>-<slice>"
            )
        volumes[m["volume"]].append((int(m["slice"]), p))
    ordered = [
        [p for _, p in sorted(volumes[k], key=lambda t: (t[0], t[1].image_id))]
        for k in sorted(volumes)
    ]
    return _cut_in_order(ordered, proportions or PAPER_SPLIT_COUNTS)


def assign_splits(
    pairs: Sequence[Pair], root: str | os.PathLike, *, split_by: str = "hash"
) -> tuple[dict[str, list[Pair]], list[Problem], str]:
    """Splits from the id lists in ``root`` if any exist, else :func:`hash_split`
    (``split_by="hash"``) or :func:`slice_split` (``split_by="slices"``).

    Returns:
      ``(splits, problems, source)`` where ``source`` is ``"files"`` or ``"hash"``. Problems:
      an id listed in several split files, a listed id with no valid pair, a pair listed in no
      split file, an empty split.
    """
    problems: list[Problem] = []
    if split_by not in SPLIT_METHODS:
        raise ValueError(f"split_by must be one of {SPLIT_METHODS}, got {split_by!r}")
    listed = read_split_files(root)
    if not listed:
        splits = hash_split(pairs) if split_by == "hash" else slice_split(pairs)
        source = split_by
        split_files = {s: os.path.join(os.fspath(root), SPLIT_FILE_NAMES[s]) for s in splits}
    else:
        source = "files"
        by_id = {p.image_id: p for p in pairs}
        owner: dict[str, str] = {}
        several: set[str] = set()
        splits = {}
        for split, (path, ids) in listed.items():
            chosen = []
            for image_id in ids:
                if image_id in owner:
                    if owner[image_id] != split:
                        several.add(image_id)
                        problems.append(
                            Problem(
                                "id_in_several_splits",
                                (listed[owner[image_id]][0], path),
                                f"id {image_id!r} is listed in {owner[image_id]} and {split}",
                            )
                        )
                    continue
                owner[image_id] = split
                if image_id not in by_id:
                    problems.append(
                        Problem(
                            "listed_id_missing",
                            (path,),
                            f"id {image_id!r} is listed but has no valid image/mask pair",
                        )
                    )
                    continue
                chosen.append(by_id[image_id])
            splits[split] = sorted(chosen, key=lambda p: p.image_id)
        # Ids in several splits are removed from all of them.
        if several:
            splits = {s: [p for p in v if p.image_id not in several] for s, v in splits.items()}
        for p in pairs:
            if p.image_id not in owner:
                problems.append(
                    Problem(
                        "unlisted",
                        (p.image_path, p.mask_path),
                        f"id {p.image_id!r} is in no split file "
                        f"({', '.join(sorted(SPLIT_FILE_NAMES[s] for s in listed))})",
                    )
                )
        split_files = {s: listed[s][0] for s in listed}
    for split, members in splits.items():
        if not members:
            problems.append(
                Problem(
                    "empty_split",
                    (split_files[split],),
                    f"split {split!r} has no examples"
                    + (" (the hash split of a tiny folder)" if source == "hash" else ""),
                )
            )
    return splits, problems, source
