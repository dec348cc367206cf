"""Which of a night's forget ids belong to which stored request.

`lethe nightly` writes the night's forget set as an ids file (the split reads it) and, beside it, the
same ids grouped by request uuid, so that evaluate can measure each request's own images (is the
first night's request still forgotten in the third version?). Both files hold ids: readable by their
owner only, never published, deleted when the night ends.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lethe import storage


def groups_path(ids_file: str | os.PathLike[str]) -> Path:
    p = Path(ids_file)
    return p.with_name(p.name + ".groups.json")


def write_night_ids(ids_file: Path, forget: Sequence[str], groups: Mapping[str, Sequence[str]]) -> None:
    """The night's forget ids (one per line) and, beside them, the ids of each request; both atomic
    and owner-only from the first byte (storage's local writes go through a 0600 temp file)."""
    storage.write_bytes(str(ids_file), "".join(f"{i}\n" for i in forget).encode())
    storage.write_json(str(groups_path(ids_file)), {k: list(v) for k, v in groups.items()})


def read_groups(ids_file: str | os.PathLike[str] | None) -> dict[str, list[str]]:
    """{request uuid: its ids}; empty when the run is no night (or its file is gone)."""
    if not ids_file:
        return {}
    try:
        raw = json.loads(groups_path(ids_file).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): [str(i) for i in v] for k, v in raw.items()} if isinstance(raw, dict) else {}


def delete_night_ids(ids_file: Path) -> None:
    ids_file.unlink(missing_ok=True)
    groups_path(ids_file).unlink(missing_ok=True)
