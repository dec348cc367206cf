"""Cartoon faces with labelled eyewear, rendered offline by py-avataaars: the attribute data set for
feature unlearning (DESIGN.md 2.3, 5).

Each face draws skin, hair, top, eyes, eyebrows, mouth and clothes from a seeded random stream, and
an accessory: none with probability 1/2, else one of the six eyewear kinds. The label is the
accessory, so the feature "glasses" is every class but "none". Rendering is ~50 ms a face, so the
set is rendered once (in parallel) and cached as a Parquet data set (id, label, image PNG, subset)
that the ordinary Parquet loader reads.

Faces are cropped to the head before resizing: at 32x32 a full avatar leaves the glasses 2-3 px
tall, the head crop keeps them clearly visible.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from lethe.errors import DataError

NAME = "avataaars"
DEFAULT_COUNT = 6000
SIZE = 32
# Eyewear accessories in py-avataaars' order; "none" is the face without any.
CLASS_NAMES = ["none", "kurt", "prescription_01", "prescription_02", "round", "sunglasses", "wayfarers"]
FEATURES = {"glasses": CLASS_NAMES[1:]}
TEST_SHARE = 1 / 6  # like Fashion-MNIST's 60k / 10k
_CROP = (50, 30, 230, 210)  # the head inside the 280x280 render
_SEED = 20240101
_SPEC = re.compile(rf"^{NAME}(?::(\d+))?$")
_FORMAT = 1  # bump when the rendering changes, so old caches are not reused


def is_spec(spec: str) -> bool:
    return bool(_SPEC.match(spec))


def parse_count(spec: str) -> int:
    """`avataaars` -> the default count; `avataaars:N` -> N faces (at least 20)."""
    m = _SPEC.match(spec)
    if not m:
        raise DataError(
            "not an avataaars data set spec", where="data.dataset", expected="avataaars[:N]", seen=spec
        )
    n = int(m.group(1)) if m.group(1) else DEFAULT_COUNT
    if n < 20:
        raise DataError("too few faces", where="data.dataset", expected="avataaars:N with N >= 20", seen=spec)
    return n


def cache_root() -> Path:
    return Path(os.environ.get("LETHE_DATA_CACHE") or Path.home() / ".cache" / "lethe").expanduser()


def ensure_rendered(spec: str, root: Path | None = None, workers: int | None = None) -> Path:
    """The cached Parquet file for `spec`, rendering it first when missing (atomically)."""
    n = parse_count(spec)
    try:
        import py_avataaars  # noqa: F401
    except (ImportError, OSError) as e:  # OSError: cairosvg without libcairo
        raise DataError(
            "cannot render avataaars faces",
            where="data.dataset",
            expected="py-avataaars with cairosvg and libcairo2 (apt-get install libcairo2)",
            seen=str(e).splitlines()[0],
        ) from e
    folder = (root or cache_root()) / "avataaars"
    path = folder / f"{NAME}-v{_FORMAT}-{n}-{SIZE}px.parquet"
    if path.is_file():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    workers = workers or max(1, min(os.cpu_count() or 1, 8))
    chunks = [range(i, min(n, i + 200)) for i in range(0, n, 200)]
    rows: list[tuple[str, str, bytes]] = []
    if workers == 1:
        for c in chunks:
            rows.extend(_render_range(c.start, c.stop))
    else:
        with ProcessPoolExecutor(workers) as ex:
            for part in ex.map(_render_range, [c.start for c in chunks], [c.stop for c in chunks]):
                rows.extend(part)
    ids = [r[0] for r in rows]
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "label": pa.array([r[1] for r in rows], pa.string()),
            "image": pa.array([r[2] for r in rows], pa.binary()),
            "subset": pa.array([_subset(i) for i in ids], pa.string()),
        }
    )
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # concurrent renderers write identical bytes; the last rename wins
    return path


def _subset(face_id: str) -> str:
    h = int(hashlib.sha256(face_id.encode()).hexdigest()[:8], 16)
    return "test" if h / 0xFFFFFFFF < TEST_SHARE else "train"


def _render_range(start: int, stop: int) -> list[tuple[str, str, bytes]]:
    return [render_face(i) for i in range(start, stop)]


def render_face(index: int) -> tuple[str, str, bytes]:
    """(id, accessory class, PNG bytes of a SIZE x SIZE RGB face); the same index, the same face."""
    import py_avataaars as pa_
    from PIL import Image

    r = random.Random(_SEED * 1_000_003 + index)
    eyewear = list(pa_.AccessoriesType)[1:]
    accessory = pa_.AccessoriesType.DEFAULT if r.random() < 0.5 else r.choice(eyewear)
    avatar = pa_.PyAvataaar(
        style=pa_.AvatarStyle.TRANSPARENT,
        skin_color=r.choice(list(pa_.SkinColor)),
        hair_color=r.choice(list(pa_.HairColor)),
        top_type=r.choice(list(pa_.TopType)),
        hat_color=r.choice(list(pa_.Color)),
        facial_hair_type=r.choice(list(pa_.FacialHairType)),
        facial_hair_color=r.choice(list(pa_.HairColor)),
        mouth_type=r.choice(list(pa_.MouthType)),
        eye_type=r.choice(list(pa_.EyesType)),
        eyebrow_type=r.choice(list(pa_.EyebrowType)),
        accessories_type=accessory,
        clothe_type=r.choice(list(pa_.ClotheType)),
        clothe_color=r.choice(list(pa_.Color)),
    )
    face = Image.open(io.BytesIO(avatar.render_png())).convert("RGBA")
    canvas = Image.new("RGBA", face.size, (255, 255, 255, 255))
    canvas.alpha_composite(face)
    small = canvas.convert("RGB").crop(_CROP).resize((SIZE, SIZE), Image.LANCZOS)
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    label = CLASS_NAMES[list(pa_.AccessoriesType).index(accessory)]
    return f"face-{index:06d}", label, buf.getvalue()
