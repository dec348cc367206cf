"""Turn a data set spec into a Ray Dataset with one fixed schema: id, label, pixels, subset.

Four sources are understood: an IDX folder (Fashion-MNIST layout), the built-in scikit-learn
"digits", the rendered cartoon faces "avataaars[:N]" (cached as Parquet, see avataaars.py), an image
folder root/<class>/*.png|jpg|jpeg and Parquet (id, label, image); image folders and Parquet also on
s3://. Everything that is cheap (ids, labels, subsets, the image shape, a decoded sample of an image
folder) is read in the driver by `open_source`, so a forget request or a folder of mixed sizes is
refused before any Ray work starts; pixels are decoded in Ray Data tasks.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lethe.data import avataaars
from lethe.data.images import check_max_side, check_sample, check_shape, decode_image, sample_indices
from lethe.errors import DataError

if TYPE_CHECKING:
    import ray.data

FASHION_MNIST = "fashion-mnist"
DIGITS = "digits"
DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "LETHE_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# ~10k rows per block keeps several blocks (parallelism) without many tiny tasks.
BLOCK_ROWS = 10_000
# Image folders: decoding is the expensive part, so use smaller blocks to spread it over workers.
FILE_BLOCK_ROWS = 2_000

_S3_EXPECTED = (
    "a Parquet file or a prefix of Parquet files with columns id,label,image, "
    "or an image folder prefix/<class>/*.png (on S3)"
)
_NOT_FOUND_EXPECTED = (
    "an IDX folder, an image folder root/<class>/*.png, or a Parquet file/folder with columns id,label,image"
)

SCHEMA = pa.schema(
    [("id", pa.string()), ("label", pa.int64()), ("pixels", pa.binary()), ("subset", pa.string())]
)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source_uri: str
    class_names: list[str]
    height: int
    width: int
    channels: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)


@dataclass
class Source:
    """A data set opened in the driver: metadata is in memory, pixels come from `to_ray`."""

    info: DatasetInfo
    # Columns id (string), label (int64), subset (string): one row per image, no pixels.
    meta: pa.Table
    kind: str
    # Kind-specific state needed to build the Ray Dataset.
    state: dict[str, Any] = field(default_factory=dict)

    def to_ray(self) -> ray.data.Dataset:
        import ray.data

        if self.kind == "arrays":
            tables = _array_tables(self.meta, self.state["images"])
            return surface_udf_errors(ray.data.from_arrow(tables))
        if self.kind == "image_folder":
            files = self.meta.append_column("path", pa.array(self.state["paths"], pa.string()))
            tables = [
                files.slice(i, FILE_BLOCK_ROWS) for i in range(0, max(files.num_rows, 1), FILE_BLOCK_ROWS)
            ]
            return surface_udf_errors(ray.data.from_arrow(tables)).map_batches(
                decode_file_batch,
                batch_format="pyarrow",
                fn_kwargs={"shape": self.info.shape, "remote": self.state["remote"]},
            )
        if self.kind == "parquet":
            columns = ["id", "label", "image"] + (["subset"] if self.state["has_subset"] else [])
            if self.state.get("remote"):
                from lethe import storage

                # Pickled into Ray tasks without credentials: they read AWS_* from their own env.
                fs, _ = storage.filesystem(self.info.source_uri)
                paths = [storage.fs_path(f) for f in self.state["files"]]
                read = ray.data.read_parquet(paths, columns=columns, filesystem=fs)
            else:
                read = ray.data.read_parquet(self.info.source_uri, columns=columns)
            ds = surface_udf_errors(read)
            return ds.map_batches(
                decode_parquet_batch,
                batch_format="pyarrow",
                fn_kwargs={
                    "shape": self.info.shape,
                    "label_values": self.state["label_values"],
                    "where": self.info.source_uri,
                },
            )
        raise AssertionError(f"unknown source kind {self.kind}")


def surface_udf_errors(ds: ray.data.Dataset) -> ray.data.Dataset:
    """Let a DataError raised in a map UDF reach the driver as itself.

    By default Ray Data raises UserCodeException(...) from the UDF's error, and the __cause__ link
    does not survive the trip back to the driver, so the one-line DataError would be lost. The
    context belongs to this dataset (and those derived from it), not to the process.
    """
    ds.context.raise_original_map_exception = True
    return ds


# -- spec resolution ------------------------------------------------------------------------------


def resolve_dataset(spec: str) -> str:
    """Map a data set spec to what `open_source` reads: a named data set, an absolute path or s3:// URI."""
    from lethe import storage

    if spec == DIGITS:
        return DIGITS
    if avataaars.is_spec(spec):
        return str(avataaars.ensure_rendered(spec))
    if storage.is_s3(spec):
        uri = storage.normalize(spec)
        if not storage.exists(uri):
            raise DataError("data set not found", where=uri, expected=_S3_EXPECTED)
        return uri
    if spec == FASHION_MNIST:
        path = Path(os.environ.get(FASHION_MNIST_ENV) or DEFAULT_FASHION_MNIST_DIR)
    else:
        path = Path(spec)
    path = path.expanduser().resolve()
    if not path.exists():
        raise DataError("data set folder not found", where=str(path), expected=_NOT_FOUND_EXPECTED)
    return str(path)


def load_dataset(spec: str) -> tuple[ray.data.Dataset, DatasetInfo]:
    """The Ray Dataset (id, label, pixels, subset) and its description."""
    src = open_source(spec)
    return src.to_ray(), src.info


def open_source(spec: str) -> Source:
    """Read everything but the pixels in the driver; checks the first image's shape."""
    from lethe import storage

    resolved = resolve_dataset(spec)
    if resolved == DIGITS:
        return _open_digits()
    if storage.is_s3(resolved):
        return _open_s3(resolved, spec)
    path = Path(resolved)
    if avataaars.is_spec(spec):
        return _open_parquet(path, avataaars.NAME)
    name = FASHION_MNIST if spec == FASHION_MNIST else spec
    if path.is_file():
        if path.suffix.lower() == ".parquet":
            return _open_parquet(path, name)
        raise DataError("unsupported data set file", where=str(path), expected=_NOT_FOUND_EXPECTED)
    if _find_idx(path, "train-images-idx3-ubyte") is not None:
        fashion = spec == FASHION_MNIST or "fashion" in path.name.lower()
        return _open_idx(path, name, fashion)
    if any(path.rglob("*.parquet")):
        return _open_parquet(path, name)
    if any(_class_dirs(path)):
        return _open_image_folder(path, name)
    raise DataError("no data set found in folder", where=str(path), expected=_NOT_FOUND_EXPECTED)


# -- IDX --------------------------------------------------------------------------------------------


def _find_idx(folder: Path, stem: str) -> Path | None:
    for cand in (folder / stem, folder / f"{stem}.gz"):
        if cand.is_file():
            return cand
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) of unsigned bytes."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError("cannot read IDX file", where=str(path), expected="an IDX file", seen=str(e)) from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(
            "bad IDX magic number", where=str(path), expected="0x0000 then type and rank", seen=raw[:4].hex()
        )
    if raw[2] != 0x08:
        raise DataError(
            "unsupported IDX element type", where=str(path), expected="0x08 (unsigned byte)", seen=hex(raw[2])
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(
            "truncated IDX header", where=str(path), expected=f"{header} header bytes", seen=f"{len(raw)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    need = int(np.prod(dims))
    have = len(raw) - header
    if have < need:
        raise DataError("truncated IDX file", where=str(path), expected=f"{need} data bytes", seen=f"{have}")
    return np.frombuffer(raw, dtype=np.uint8, count=need, offset=header).reshape(dims)


def read_idx_pair(folder: Path, prefix: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Images (N,H,W,1) and labels (N,) for prefix "train" or "t10k"; None if the pair is absent."""
    img_path = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
    lab_path = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
    if img_path is None and lab_path is None:
        return None
    if img_path is None or lab_path is None:
        missing = f"{prefix}-images-idx3-ubyte" if img_path is None else f"{prefix}-labels-idx1-ubyte"
        raise DataError("IDX folder is missing a file", where=str(folder), expected=f"{missing}(.gz)")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3:
        raise DataError(
            "IDX images must be 3-D", where=str(img_path), expected="N x H x W", seen=f"{images.ndim}-D"
        )
    if labels.ndim != 1:
        raise DataError("IDX labels must be 1-D", where=str(lab_path), expected="N", seen=f"{labels.ndim}-D")
    if len(images) != len(labels):
        raise DataError(
            "IDX image and label counts differ",
            where=str(folder),
            expected=f"{len(images)} labels",
            seen=f"{len(labels)}",
        )
    return images[..., None], labels.astype(np.int64)


def _open_idx(folder: Path, name: str, fashion: bool) -> Source:
    parts: list[tuple[str, np.ndarray, np.ndarray]] = []
    for prefix, subset in (("train", "train"), ("t10k", "test")):
        pair = read_idx_pair(folder, prefix)
        if pair is not None:
            parts.append((subset, *pair))
    images = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    ids = [f"{subset}-{i:05d}" for subset, imgs, _ in parts for i in range(len(imgs))]
    subsets = [subset for subset, imgs, _ in parts for _ in range(len(imgs))]
    if fashion:
        if labels.size and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise DataError(
                "Fashion-MNIST label out of range",
                where=str(folder),
                expected="0..9",
                seen=str(int(labels.max())),
            )
        class_names = list(FASHION_MNIST_CLASSES)
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1 if labels.size else 0)]
    check_max_side(images.shape[1:], str(folder))
    info = DatasetInfo(name, str(folder), class_names, *images.shape[1:])
    return Source(info, _meta(ids, labels, subsets), "arrays", {"images": images})


# -- digits ---------------------------------------------------------------------------------------


def _open_digits() -> Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Values are 0..16; scale to the full byte range so they look like every other source.
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    labels = bunch.target.astype(np.int64)
    ids = [f"digits-{i:04d}" for i in range(len(images))]
    info = DatasetInfo(DIGITS, "sklearn.datasets.load_digits", [str(i) for i in range(10)], 8, 8, 1)
    return Source(info, _meta(ids, labels, [""] * len(ids)), "arrays", {"images": images})


# -- image folder ---------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(root: Path) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints, .DS_Store dirs, our own temp dirs) are never classes.
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and _image_files(p))


def _open_image_folder(root: Path, name: str) -> Source:
    classes = [(d.name, [str(f) for f in _image_files(d)]) for d in _class_dirs(root)]
    return _folder_source(classes, str(root), name, remote=False)


def _s3_classes(files: list[str], prefix: str) -> list[tuple[str, list[str]]]:
    """Objects named prefix/<class>/<file>.png|jpg|jpeg, grouped by class (as a local folder is)."""
    by_class: dict[str, list[str]] = {}
    for uri in files:
        parts = uri[len(prefix) + 1 :].split("/")
        if len(parts) == 2 and not parts[0].startswith(".") and uri.lower().endswith(IMAGE_SUFFIXES):
            by_class.setdefault(parts[0], []).append(uri)
    return [(c, sorted(by_class[c])) for c in sorted(by_class)]


def _open_s3(uri: str, name: str) -> Source:
    from lethe import storage

    files = storage.list_files(uri)
    parquet = [f for f in files if f.endswith(".parquet")]
    if parquet:
        return _open_parquet_files(parquet, uri, name, remote=True)
    classes = _s3_classes(files, uri)
    if not classes:
        raise DataError(
            "no Parquet files and no image folder found",
            where=uri,
            expected=_S3_EXPECTED,
            seen=f"{len(files)} other objects",
        )
    return _folder_source(classes, uri, name, remote=True)


def _folder_source(classes: list[tuple[str, list[str]]], root: str, name: str, remote: bool) -> Source:
    """An image folder (local paths or s3:// URIs), each class's files sorted; a sample is decoded
    here so that mixed sizes, modes or broken files are refused before Ray reads the rest."""
    ids: list[str] = []
    labels: list[int] = []
    paths: list[str] = []
    for label, (cls, files) in enumerate(classes):
        for f in files:
            ids.append(f"{cls}/{f.rpartition('/')[2]}")
            labels.append(label)
            paths.append(f)
    fs = _image_fs(remote)
    shape = check_sample(lambda p: read_image_file(p, fs), paths, sample_indices(labels))
    info = DatasetInfo(name, root, [c for c, _ in classes], *shape)
    meta = _meta(ids, np.asarray(labels, np.int64), [""] * len(ids))
    return Source(info, meta, "image_folder", {"paths": paths, "remote": remote})


def _image_fs(remote: bool) -> Any:
    from lethe import storage

    # Built from the AWS_* variables of the process that reads: a Ray task uses its own.
    return storage.s3_filesystem() if remote else None


def read_image_file(path: str, fs: Any = None) -> bytes:
    """The bytes of one image: a local path, or an s3:// URI read through `fs` (pyarrow's S3)."""
    from lethe import storage

    try:
        if fs is None:
            return Path(path).read_bytes()
        with fs.open_input_stream(storage.fs_path(path)) as fh:
            return fh.read()
    except OSError as e:
        raise DataError("cannot read image file", where=path, seen=e.strerror or storage.reason(e)) from e


def decode_file_batch(batch: pa.Table, shape: tuple[int, int, int], remote: bool = False) -> pa.Table:
    """Ray Data UDF: read and decode the files named in `path`; every image must have `shape`."""
    fs = _image_fs(remote)
    pixels = []
    for path in batch.column("path").to_pylist():
        arr = decode_image(read_image_file(path, fs), path)
        check_shape(arr.shape, shape, path)
        pixels.append(arr.tobytes())
    return _output_table(batch.column("id"), batch.column("label"), pixels, batch.column("subset"))


# -- Parquet --------------------------------------------------------------------------------------


def _parquet_files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(path.rglob("*.parquet"))


def _open_parquet(path: Path, name: str) -> Source:
    return _open_parquet_files([str(f) for f in _parquet_files(path)], str(path), name, remote=False)


def _open_parquet_files(files: list[str], where: str, name: str, remote: bool) -> Source:
    """Ids, labels, subsets and the first image of a Parquet data set (local files or s3:// objects)."""
    from lethe import storage

    fs = storage.filesystem(files[0])[0] if remote else None
    paths = [storage.fs_path(f) for f in files] if remote else files

    def io(what: str, fn):
        # Local reads fail fast; S3 reads retry transient errors first.
        return storage.with_retries(what, where, fn) if remote else fn()

    try:
        schema = io("reading the Parquet schema", lambda: pq.read_schema(paths[0], filesystem=fs))
    except (OSError, pa.ArrowException) as e:
        raise DataError("cannot read Parquet file", where=files[0], seen=str(e).splitlines()[0]) from e
    for column in ("id", "label", "image"):
        if column not in schema.names:
            raise DataError(
                f"Parquet data set has no column '{column}'",
                where=where,
                expected="columns id, label, image",
                seen="columns " + ", ".join(schema.names),
            )
    has_subset = "subset" in schema.names
    columns = ["id", "label"] + (["subset"] if has_subset else [])
    try:
        table = io(
            "reading the Parquet data set",
            lambda: pq.read_table(paths if len(paths) > 1 else paths[0], columns=columns, filesystem=fs),
        )
    except (OSError, pa.ArrowException) as e:
        raise DataError("cannot read Parquet data set", where=where, seen=str(e).splitlines()[0]) from e
    path = where
    ids = pc.cast(table.column("id"), pa.string())
    if ids.null_count:
        raise DataError("Parquet data set has empty ids", where=str(path), expected="an id on every row")
    n_dup = len(ids) - pc.count_distinct(ids).as_py()
    if n_dup:
        # Count only: ids may name people whose data is to be forgotten.
        raise DataError(
            "duplicate ids in the data set",
            where=str(path),
            expected="unique ids",
            seen=f"{n_dup} duplicates",
        )
    raw_labels = table.column("label")
    if raw_labels.null_count:
        raise DataError("Parquet data set has empty labels", where=str(path), expected="a label on every row")
    label_values, labels = encode_labels(raw_labels, str(path))
    subsets = _subset_column(table.column("subset")) if has_subset else pa.array([""] * len(ids), pa.string())

    def first_row() -> bytes:
        source = fs.open_input_file(paths[0]) if fs is not None else paths[0]
        return pq.ParquetFile(source).read_row_group(0, columns=["image"]).column("image")[0].as_py()

    first = decode_image(io("reading the first image", first_row), f"{files[0]} (first row, column image)")
    check_max_side(first.shape, str(files[0]))
    info = DatasetInfo(name, str(path), [str(v) for v in label_values], *first.shape)
    meta = pa.table({"id": ids.combine_chunks(), "label": pa.array(labels, pa.int64()), "subset": subsets})
    state = {"label_values": label_values, "has_subset": has_subset, "remote": remote, "files": files}
    return Source(info, meta, "parquet", state)


def encode_labels(raw: pa.ChunkedArray | pa.Array, where: str) -> tuple[list[Any], np.ndarray]:
    """Sorted distinct label values (strings or ints) and each row's index into them."""
    if pa.types.is_integer(raw.type):
        raw = pc.cast(raw, pa.int64())
    elif pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type):
        raw = pc.cast(raw, pa.string())
    else:
        raise DataError(
            "unsupported label type",
            where=f"{where} (column label)",
            expected="strings or integers",
            seen=str(raw.type),
        )
    values = sorted(pc.unique(raw).to_pylist())
    index = pc.index_in(raw, value_set=pa.array(values, raw.type))
    return values, np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int64)


def _subset_column(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = pc.fill_null(pc.cast(col, pa.string()), "")
    return arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr


def decode_parquet_batch(
    batch: pa.Table, shape: tuple[int, int, int], label_values: list[Any], where: str
) -> pa.Table:
    """Ray Data UDF: PNG/JPEG bytes in `image` -> raw pixels; labels -> indices into `label_values`."""
    pixels = []
    for data in batch.column("image").to_pylist():
        # No ids in these errors: a row id may belong to a forget request.
        arr = decode_image(data, f"{where} (column image)")
        check_shape(arr.shape, shape, f"{where} (column image)")
        pixels.append(arr.tobytes())
    raw = batch.column("label")
    raw = pc.cast(raw, pa.int64() if pa.types.is_integer(raw.type) else pa.string())
    labels = pc.index_in(raw, value_set=pa.array(label_values, raw.type))
    subsets = (
        _subset_column(batch.column("subset"))
        if "subset" in batch.column_names
        else pa.array([""] * batch.num_rows, pa.string())
    )
    return _output_table(pc.cast(batch.column("id"), pa.string()), labels, pixels, subsets)


# -- shared helpers -------------------------------------------------------------------------------


def _meta(ids: Sequence[str], labels: np.ndarray, subsets: Sequence[str]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array(labels, pa.int64()),
            "subset": pa.array(subsets, pa.string()),
        }
    )


def _binary_from_fixed(images: np.ndarray) -> pa.Array:
    """(N, ...) uint8 -> a binary array of N equal-length values without a Python loop."""
    n = len(images)
    size = int(np.prod(images.shape[1:]))
    offsets = (np.arange(n + 1, dtype=np.int32) * size).astype(np.int32)
    data = np.ascontiguousarray(images).tobytes()
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(data)])


def _array_tables(meta: pa.Table, images: np.ndarray) -> list[pa.Table]:
    tables = []
    for start in range(0, max(meta.num_rows, 1), BLOCK_ROWS):
        m = meta.slice(start, BLOCK_ROWS)
        tables.append(
            pa.table(
                [
                    m.column("id"),
                    m.column("label"),
                    _binary_from_fixed(images[start : start + BLOCK_ROWS]),
                    m.column("subset"),
                ],
                schema=SCHEMA,
            )
        )
    return tables


def _output_table(ids: Any, labels: Any, pixels: list[bytes], subsets: Any) -> pa.Table:
    return pa.table(
        [
            pc.cast(ids, pa.string()),
            pc.cast(labels, pa.int64()),
            pa.array(pixels, pa.binary()),
            pc.cast(subsets, pa.string()),
        ],
        schema=SCHEMA,
    )


def id_hashes(ids: Sequence[str]) -> list[str]:
    """sha256 hex of each id: fixed-length hex sorts like the number it spells."""
    return [hashlib.sha256(i.encode()).hexdigest() for i in ids]
