"""Your own data: ``folder:PATH`` (images), ``npz:PATH`` (arrays) and ``csv:PATH`` / a DataFrame (series).

``load_dataset("folder:photos")`` (and ``diffusekit train --data folder:photos``) dispatch here by prefix.

``folder:PATH`` -- PNG / JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case) read with Pillow, in sorted
order. Either all images lie in PATH, or PATH holds one subfolder per class: then the labels are the
sorted subfolder names' indices (``y``, ``info["num_classes"]``, ``info["class_names"]``). Options:

* ``size`` (default None): side length. Each image is center-cropped to its largest centred square, then
  resized to ``size x size`` (Pillow bicubic, antialiased when shrinking). With None every image must
  already have the same size, which is kept (mixed sizes are a one-line error that names them).
* ``grey`` (default False): convert to 1 channel (Pillow ``L``), else to RGB (3 channels; alpha dropped).
* ``cache_dir`` (default ``$DIFFUSEKIT_CACHE`` or ``~/.cache/diffusekit/data``): see below.

Pixels p in 0..255 become ``x = p / 127.5 - 1`` in [-1, 1], float32 ``(N, C, H, W)``. Files Pillow cannot
read are skipped and their count and names printed on stderr (never silently); an empty folder, or one
where nothing is readable, is an error.

``npz:PATH`` -- an ``np.savez`` / ``np.savez_compressed`` file with array ``x`` and optionally ``y``.
``x`` is ``(N, D)`` vectors, ``(N, C, L)`` signals or ``(N, C, H, W)`` images (``layout: nhwc`` for
``(N, H, W, C)``). Option ``scale`` (default ``auto``): ``auto`` maps uint8 0..255 to [-1, 1] by
``x / 127.5 - 1`` and keeps float arrays as they are; ``unit`` maps floats in [0, 1] by ``2 x - 1``
(values outside are an error); ``none`` casts to float32 unchanged (uint8 included). Other integer or
object dtypes, non-finite values and a ``y`` that is not an integer vector of length N with values >= 0
are errors. ``y`` gives ``num_classes = max(y) + 1``. Other arrays are ignored (named on stderr).

Both image loaders keep memory bounded by a **memory-mapped cache file**, not by an iterable dataset:
files are decoded (or read in chunks of about 16 MB) one at a time into a float32 ``.npy`` in ``cache_dir``,
written atomically and named by a hash of the source (paths, sizes, modification times) and the
options, so a second load only maps it. ``x`` is a tensor over that map: the trainer's batches read just
their rows (and under DDP each rank only its own share), the operating system pages the rest in and
out, and the trainer's data order, resume and world-size guarantees are unchanged because indexing is.

``csv:PATH`` / :func:`load_frame` (a pandas DataFrame) -- a time series cut into sliding windows like
:mod:`.series`: options ``column`` (a name, an index or a list of them; default the only numeric column),
``window`` (32), ``stride`` (1), ``train_fraction`` (0.8). Rows are taken in file order; train holds the
windows inside the first ``s = round(train_fraction L)`` rows, test those inside the rest. Each column is
standardised with the train part's mean and population std (``info["mean"]``, ``info["std"]``; ``raw =
x * std + mean``); missing values are linearly interpolated along the rows, with a printed count.
``x`` is ``(N, C, window)``, a strided view on one copy of the series (memory O(L), not O(N window)):
read it, clone it before writing to it.

Splits: folders and npz files are one ``train`` split; ``n`` takes the first n examples (in sorted file
order, so class by class for class folders). ``seed`` is ignored (nothing here is random).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write, atomic_write_json
from ._common import DatasetSplit, check_bool, check_int, check_n_available
from .series import TRAIN_FRACTION

__all__ = ["IMAGE_SUFFIXES", "USER_OPTIONS", "cache_root", "is_user_spec", "load_csv", "load_frame",
           "load_image_folder", "load_npz", "load_user_dataset"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1
CHUNK_BYTES = 16 << 20
#: accepted options per prefix, with their defaults
USER_OPTIONS: dict[str, dict[str, Any]] = {
    "folder": {"size": None, "grey": False, "cache_dir": None},
    "npz": {"scale": "auto", "layout": "nchw", "cache_dir": None},
    "csv": {"column": None, "window": 32, "stride": 1, "train_fraction": TRAIN_FRACTION},
}
NPZ_SCALES = ("auto", "unit", "none")
NPZ_LAYOUTS = ("nchw", "nhwc")


def is_user_spec(name: Any) -> bool:
    """True for ``folder:PATH``, ``npz:PATH`` and ``csv:PATH``."""
    return isinstance(name, str) and name.partition(":")[0] in USER_OPTIONS and ":" in name


def load_user_dataset(spec: str, split: str = "train", *, n: int | None = None, seed: int = 0,
                      **options) -> DatasetSplit:
    """Load ``folder:PATH``, ``npz:PATH`` or ``csv:PATH`` (see the module docstring); ``seed`` is unused."""
    del seed
    kind, _, path = spec.partition(":")
    if kind not in USER_OPTIONS or not path:
        raise ValueError(f"data {spec!r}: give folder:PATH, npz:PATH or csv:PATH")
    unknown = sorted(set(options) - set(USER_OPTIONS[kind]))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r} for {kind}: data; allowed: {', '.join(USER_OPTIONS[kind])}")
    resolved = {**USER_OPTIONS[kind], **options}
    if n is not None:
        n = check_int("n", n, 1)
    if kind == "csv":
        data = load_csv(path, split, n=n, **resolved)
    else:
        if split != "train":
            raise ValueError(f"{spec}: {kind} data has one split, 'train' (got {split!r})")
        data = (load_image_folder if kind == "folder" else load_npz)(path, n=n, **resolved)
    data.info.update({"split": split, "seed": 0, "options": resolved})
    return data


# ------------------------------------------------------------------------------------------ the cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where decoded data is cached: ``cache_dir``, else ``$DIFFUSEKIT_CACHE``, else ``~/.cache/diffusekit/data``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("DIFFUSEKIT_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "diffusekit" / "data"


def _cache_key(kind: str, files: list[Path], options: dict) -> str:
    listing = []
    for f in files:
        st = f.stat()
        listing.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    text = json.dumps({"kind": kind, "version": CACHE_VERSION, "files": listing, "options": options}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_npy(path: Path, shape: tuple, fill) -> None:
    """Write a float32 ``.npy`` of ``shape`` atomically; ``fill(memmap)`` writes its rows."""
    def write(tmp: Path) -> None:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        fill(out)
        out.flush()
        del out

    atomic_write(path, write)


def _mapped(path: Path) -> torch.Tensor:
    """The cached array as a tensor over a copy-on-write memory map (pages are read on access)."""
    return torch.from_numpy(np.load(path, mmap_mode="c", allow_pickle=False))


def _cached(root: Path, stem: str) -> dict | None:
    meta_path = root / f"{stem}.json"
    if not (meta_path.is_file() and (root / f"{stem}.npy").is_file()):
        return None
    try:
        return json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _note(message: str) -> None:
    print(message, file=sys.stderr)


def _names(paths: list[str], limit: int = 3) -> str:
    more = f", ... ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


# ------------------------------------------------------------------------------------- image folders


def _scan_folder(root: Path, spec: str) -> tuple[list[Path], list[int], list[str], int]:
    """Image files in sorted order, their labels (-1: no classes), the class names and the count of ignored
    non-image files."""
    if not root.is_dir():
        raise ValueError(f"{spec}: no such folder")
    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    top = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    ignored = sum(1 for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES)
    classes = []
    for d in (p for p in entries if p.is_dir()):
        images = sorted(p for p in d.iterdir()
                        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
        ignored += sum(1 for p in d.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() not in IMAGE_SUFFIXES)
        if images:
            classes.append((d.name, images))
    if top and classes:
        raise ValueError(f"{spec} mixes images ({top[0].name}, ...) with class subfolders ({classes[0][0]}, ...); "
                         "put every image in a class subfolder, or none")
    if not top and not classes:
        raise ValueError(f"{spec} holds no {'/'.join(IMAGE_SUFFIXES)} images (looked in it and in its subfolders)")
    if top:
        return top, [-1] * len(top), [], ignored
    files, labels = [], []
    for k, (_, images) in enumerate(classes):
        files += images
        labels += [k] * len(images)
    return files, labels, [name for name, _ in classes], ignored


def _open_image(path: Path, size: int | None, grey: bool) -> np.ndarray:
    """One image as float32 (C, H, W) in [-1, 1]: center crop + resize when ``size`` is set."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L" if grey else "RGB")
        if size is not None:
            w, h = im.size
            side = min(w, h)
            left, top = (w - side) // 2, (h - side) // 2
            im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return a.astype(np.float32) / 127.5 - 1.0


def load_image_folder(path: str | os.PathLike, *, size: int | None = None, grey: bool = False,
                      cache_dir: str | os.PathLike | None = None, n: int | None = None) -> DatasetSplit:
    """``folder:PATH`` as a memory-mapped float32 ``(N, C, H, W)`` dataset in [-1, 1] (module docstring)."""
    from PIL import Image, UnidentifiedImageError

    spec = f"folder:{path}"
    if size is not None:
        size = check_int("folder option size", size, 1)
    grey = check_bool("folder option grey", grey)
    root = Path(path).expanduser()
    files, labels, class_names, ignored = _scan_folder(root, spec)
    if ignored:
        _note(f"{spec}: ignored {ignored} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} images")
    cache = cache_root(cache_dir)
    stem = "folder-" + _cache_key("folder", files, {"size": size, "grey": grey})
    meta = _cached(cache, stem)
    if meta is None:
        meta = _decode_folder(files, labels, size, grey, root, spec, cache, stem,
                              (OSError, ValueError, SyntaxError, UnidentifiedImageError, Image.DecompressionBombError))
    if meta["skipped"]:
        _note(f"{spec}: skipped {len(meta['skipped'])} unreadable file(s): {_names(meta['skipped'])}")
    x = _mapped(cache / f"{stem}.npy")
    count = check_n_available(n, x.shape[0], spec)
    y = torch.tensor(meta["labels"][:count], dtype=torch.int64) if class_names else None
    info = {"value_range": (-1.0, 1.0), "num_classes": len(class_names) or None, "class_names": class_names,
            "skipped": list(meta["skipped"]), "cache_file": str(cache / f"{stem}.npy"), "memory_mapped": True,
            "description": f"images from {root}"}
    return DatasetSplit(spec, x[:count], y, info)


def _decode_folder(files, labels, size, grey, root, spec, cache, stem, errors) -> dict:
    """Check sizes from the headers, then decode one image at a time into the cache file."""
    from PIL import Image
    from tqdm import tqdm

    readable, sizes, skipped = [], {}, []
    for f, label in zip(files, labels):
        try:
            with Image.open(f) as im:
                sizes[f] = im.size
            readable.append((f, label))
        except errors:
            skipped.append(str(f.relative_to(root)))
    if not readable:
        raise ValueError(f"{spec}: none of its {len(files)} image files could be read ({_names(skipped)})")
    if size is None:
        counts = Counter(sizes[f] for f, _ in readable)
        if len(counts) > 1:
            common = ", ".join(f"{w}x{h} in {k} file(s), e.g. {next(f.name for f, _ in readable if sizes[f] == (w, h))}"
                               for (w, h), k in counts.most_common(3))
            raise ValueError(f"{spec}: images have different sizes ({common}); pass --size N (data option size) to "
                             "center-crop and resize them all to N x N")
    w, h = (size, size) if size is not None else sizes[readable[0][0]]
    shape = (len(readable), 1 if grey else 3, h, w)
    kept: list[int] = []

    def fill(out: np.ndarray) -> None:
        for f, label in tqdm(readable, desc=f"decode {root.name}", unit="img", file=sys.stderr, disable=None,
                             leave=False):
            try:
                image = _open_image(f, size, grey)
            except errors:
                skipped.append(str(f.relative_to(root)))
                continue
            if image.shape != shape[1:]:  # a header that lied about the size
                skipped.append(str(f.relative_to(root)))
                continue
            out[len(kept)] = image
            kept.append(label)

    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{stem}.npy"
    _write_npy(target, shape, fill)
    if len(kept) < shape[0]:  # files that failed while decoding: keep only the rows written
        if not kept:
            target.unlink()
            raise ValueError(f"{spec}: none of its {len(files)} image files could be read ({_names(skipped)})")
        full = np.load(target, mmap_mode="r")
        _write_npy(target, (len(kept), *shape[1:]), lambda out: _copy_rows(full, out))
        del full
    meta = {"labels": kept, "skipped": sorted(skipped), "shape": [len(kept), *shape[1:]]}
    atomic_write_json(cache / f"{stem}.json", meta)
    return meta


def _copy_rows(src: np.ndarray, out: np.ndarray) -> None:
    step = max(1, CHUNK_BYTES // max(1, src[0].nbytes))
    for i in range(0, out.shape[0], step):
        out[i:i + step] = src[i:i + step]


# ------------------------------------------------------------------------------------------------ npz


def _npz_member(zf: zipfile.ZipFile, name: str, spec: str):
    """(open file positioned at the data, shape, fortran_order, dtype) of array ``name`` in an npz."""
    fp = zf.open(f"{name}.npy")
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"{spec}: array {name!r} uses .npy format {version}; save it with numpy's np.savez")
    if dtype.hasobject:
        raise ValueError(f"{spec}: array {name!r} holds Python objects; save plain numeric arrays")
    return fp, shape, fortran, dtype


def _read_rows(fp, shape, fortran, dtype, rows_per_chunk: int):
    """Yield consecutive row blocks of an array stored after its header in ``fp``."""
    if fortran:  # rows are not contiguous on disk: read it whole (documented exception to bounded memory)
        data = np.frombuffer(fp.read(), dtype=dtype, count=int(np.prod(shape))).reshape(shape[::-1]).T
        for i in range(0, shape[0], rows_per_chunk):
            yield data[i:i + rows_per_chunk]
        return
    row = int(np.prod(shape[1:], dtype=np.int64))
    for i in range(0, shape[0], rows_per_chunk):
        k = min(rows_per_chunk, shape[0] - i)
        buf = fp.read(k * row * dtype.itemsize)
        yield np.frombuffer(buf, dtype=dtype, count=k * row).reshape((k, *shape[1:]))


def _convert(block: np.ndarray, dtype: np.dtype, scale: str, spec: str, first_row: int) -> np.ndarray:
    if scale == "auto" and dtype == np.uint8:
        out = block.astype(np.float32) / 127.5 - 1.0
    else:
        out = block.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = first_row + int(np.argwhere(bad.reshape(len(out), -1).any(1))[0, 0])
        raise ValueError(f"{spec}: x holds NaN or infinite values (first in row {row})")
    if scale == "unit":
        if out.min() < 0 or out.max() > 1:
            raise ValueError(f"{spec}: scale 'unit' needs x in [0, 1]; rows from {first_row} reach "
                             f"[{out.min():g}, {out.max():g}] (use scale 'none' to keep values as they are)")
        out = 2.0 * out - 1.0
    return out


def load_npz(path: str | os.PathLike, *, scale: str = "auto", layout: str = "nchw",
             cache_dir: str | os.PathLike | None = None, n: int | None = None) -> DatasetSplit:
    """``npz:PATH`` as a memory-mapped float32 dataset (module docstring for the checks and scaling rules)."""
    spec = f"npz:{path}"
    if scale not in NPZ_SCALES:
        raise ValueError(f"npz option scale must be one of {', '.join(NPZ_SCALES)}; got {scale!r}")
    if layout not in NPZ_LAYOUTS:
        raise ValueError(f"npz option layout must be one of {', '.join(NPZ_LAYOUTS)}; got {layout!r}")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"{spec}: no such file")
    try:
        zf = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{spec} is not an .npz file written by np.savez ({err})") from None
    with zf:
        names = sorted(m[:-4] for m in zf.namelist() if m.endswith(".npy"))
        if "x" not in names:
            raise ValueError(f"{spec} has no array 'x' (arrays: {', '.join(names) or 'none'}); save it with "
                             "np.savez(path, x=data, y=labels)")
        others = [m for m in names if m not in ("x", "y")]
        if others:
            _note(f"{spec}: ignored arrays {', '.join(others)} (only x and the optional y are read)")
        fp, shape, fortran, dtype = _npz_member(zf, "x", spec)
        if len(shape) not in (2, 3, 4) or shape[0] < 1:
            raise ValueError(f"{spec}: x has shape {shape}; allowed: (N, D) vectors, (N, C, L) signals or "
                             "(N, C, H, W) images with N >= 1")
        if dtype.kind not in "fu" or (dtype.kind == "u" and dtype != np.uint8 and scale != "none"):
            raise ValueError(f"{spec}: x has dtype {dtype}; allowed: uint8 (0..255, scaled to [-1, 1]) or "
                             "float16/32/64 (or any number with scale 'none')")
        if len(shape) == 4 and layout == "nchw" and shape[1] > 4 and shape[3] <= 4:
            raise ValueError(f"{spec}: x has shape {shape}, which looks channels-last (N, H, W, C); pass data "
                             "option layout: nhwc (or save it as (N, C, H, W))")
        out_shape = (shape[0], shape[3], shape[1], shape[2]) if layout == "nhwc" and len(shape) == 4 else shape
        if layout == "nhwc" and len(shape) != 4:
            raise ValueError(f"{spec}: layout 'nhwc' is for 4-D images; x has shape {shape}")
        y = _npz_labels(zf, shape[0], spec) if "y" in names else None
        cache = cache_root(cache_dir)
        stem = "npz-" + _cache_key("npz", [file], {"scale": scale, "layout": layout})
        if _cached(cache, stem) is None:
            row_bytes = max(1, int(np.prod(shape[1:])) * max(4, dtype.itemsize))
            rows = max(1, CHUNK_BYTES // row_bytes)

            def fill(out: np.ndarray) -> None:
                i = 0
                for block in _read_rows(fp, shape, fortran, dtype, rows):
                    block = _convert(block, dtype, scale, spec, i)
                    out[i:i + len(block)] = block.transpose(0, 3, 1, 2) if layout == "nhwc" else block
                    i += len(block)

            cache.mkdir(parents=True, exist_ok=True)
            _write_npy(cache / f"{stem}.npy", out_shape, fill)
            atomic_write_json(cache / f"{stem}.json", {"shape": list(out_shape)})
        fp.close()
    x = _mapped(cache / f"{stem}.npy")
    count = check_n_available(n, x.shape[0], spec)
    in_unit_box = scale != "none" and (dtype == np.uint8 or scale == "unit")
    info = {"value_range": (-1.0, 1.0) if in_unit_box else None,
            "num_classes": int(y.max()) + 1 if y is not None and len(y) else None,
            "source_dtype": str(dtype), "cache_file": str(cache / f"{stem}.npy"), "memory_mapped": True,
            "description": f"arrays from {file}"}
    return DatasetSplit(spec, x[:count], y[:count] if y is not None else None, info)


def _npz_labels(zf: zipfile.ZipFile, count: int, spec: str) -> torch.Tensor:
    fp, shape, fortran, dtype = _npz_member(zf, "y", spec)
    with fp:
        if shape != (count,) or dtype.kind not in "iu":
            raise ValueError(f"{spec}: y must be an integer vector of length {count} (one label per row of x); "
                             f"got dtype {dtype}, shape {shape}")
        y = next(_read_rows(fp, shape, fortran, dtype, max(1, count)))
    if (y < 0).any():
        raise ValueError(f"{spec}: y must hold class indices >= 0; found {int(y.min())}")
    return torch.from_numpy(y.astype(np.int64))


# ------------------------------------------------------------------------------------------ CSV series


def load_csv(path: str | os.PathLike, split: str = "train", *, n: int | None = None, **options) -> DatasetSplit:
    """``csv:PATH``: read with ``pandas.read_csv``, then :func:`load_frame`."""
    import pandas as pd

    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"csv:{path}: no such file")
    try:
        frame = pd.read_csv(file)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        raise ValueError(f"csv:{path} cannot be read as CSV: {str(err).splitlines()[0]}") from None
    return load_frame(frame, split, n=n, name=f"csv:{path}", **options)


def load_frame(frame, split: str = "train", *, column=None, window: int = 32, stride: int = 1,
               train_fraction: float = TRAIN_FRACTION, n: int | None = None, name: str = "frame") -> DatasetSplit:
    """Sliding windows ``(N, C, window)`` of a DataFrame's column(s), standardised with the train part's
    statistics: ``x = (raw - mean_train) / std_train`` per column (the windowing of :mod:`.series`)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name}: expected a pandas DataFrame; got {type(frame).__name__}")
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
    columns = _pick_columns(frame, numeric, column, name)
    if not 0 < float(train_fraction) <= 1:
        raise ValueError(f"{name}: train_fraction must be in (0, 1]; got {train_fraction!r}")
    values = frame[columns].to_numpy(dtype=np.float64).T.copy()  # (C, L)
    length = values.shape[1]
    missing = np.isnan(values)
    if missing.any():
        rows = np.arange(length)
        for c, col in enumerate(columns):
            if missing[c].all():
                raise ValueError(f"{name}: column {col!r} holds no numbers")
            values[c, missing[c]] = np.interp(rows[missing[c]], rows[~missing[c]], values[c, ~missing[c]])
        _note(f"{name}: filled {int(missing.sum())} missing value(s) by linear interpolation along the rows")
    s = int(round(float(train_fraction) * length))
    window = check_int(f"{name} option window", window, 2, max(2, s))
    stride = check_int(f"{name} option stride", stride, 1)
    if split not in ("train", "test"):
        raise ValueError(f"unknown split {split!r} for {name}; allowed: train, test")
    offset, part = (0, s) if split == "train" else (s, length - s)
    if part < window:
        raise ValueError(f"{name}: the {split} part has {part} rows, fewer than window={window}")
    count = check_n_available(n, (part - window) // stride + 1, f"{name}/{split} (window={window}, stride={stride})")
    mean, std = values[:, :s].mean(1), values[:, :s].std(1)
    if (std == 0).any():
        raise ValueError(f"{name}: column {columns[int(np.argmax(std == 0))]!r} is constant in the train part")
    series = torch.from_numpy(((values - mean[:, None]) / std[:, None]).astype(np.float32))
    # window k of channel c starts at row offset + k * stride: a view, no copy per window
    x = torch.as_strided(series, (count, len(columns), window), (stride, length, 1), offset)
    starts = offset + stride * torch.arange(count, dtype=torch.int64)
    one = len(columns) == 1
    info = {"value_range": None, "num_classes": None, "columns": [str(c) for c in columns],
            "mean": float(mean[0]) if one else mean.tolist(), "std": float(std[0]) if one else std.tolist(),
            "window": window, "stride": stride, "split_index": s, "series_length": length, "starts": starts}
    return DatasetSplit(name, x, None, info)


def _pick_columns(frame, numeric: list, column, name: str) -> list:
    if column is None:
        if len(numeric) != 1:
            raise ValueError(f"{name} has numeric columns {', '.join(map(str, numeric)) or '(none)'}; choose one "
                             "(or a list) with data option column")
        return numeric
    chosen = []
    for c in column if isinstance(column, (list, tuple)) else [column]:
        if isinstance(c, int) and not isinstance(c, bool) and c not in frame.columns:
            if not 0 <= c < len(frame.columns):
                raise ValueError(f"{name}: column index {c} is outside 0..{len(frame.columns) - 1}")
            c = frame.columns[c]
        if c not in frame.columns:
            raise ValueError(f"{name} has no column {c!r}; columns: {', '.join(map(str, frame.columns))}")
        if c not in numeric:
            raise ValueError(f"{name}: column {c!r} is not numeric; numeric columns: {', '.join(map(str, numeric))}")
        chosen.append(c)
    return chosen
