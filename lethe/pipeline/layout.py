"""The work-dir layout: where each step finds what the previous one left.

    <workdir>/shards/            manifest.json + forget / retain / heldout_* Parquet shards
    <workdir>/models/            original.pt, featnet.pt, oracle.pt, unlearned.pt
    <workdir>/report/            report.json, report.html, grid_*.png
    <workdir>/certificate/       certificate.json, certificate.html (written after cleanup)
    <workdir>/ray/               Ray Train / Tune storage_path (checkpoints)
    <workdir>/tune/              best.json (the tuned alpha and lr) and result.json (every trial)
    <workdir>/state.json         the run state (lethe.pipeline.state): timings and tracking ids of the
                                 last run, also how steps run in separate processes (KFP components)
                                 find the pipeline's MLflow run
    <cache_dir>/models/          original / oracle / feature net, keyed by data digest + config

With `storage.uri` set (e.g. s3://bucket/run), shards and Ray checkpoints live only there, and models,
reports, tune results and state are published there after each step (the same relative layout) and
fetched from there by the next step, so steps can run on different machines. The work dir keeps
local copies, the local MLflow store and the model cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lethe import storage
from lethe.config import RunConfig
from lethe.errors import StorageError


@dataclass
class Layout:
    root: Path
    cache: Path
    remote: str | None = None  # storage.uri: where shards, checkpoints and published outputs live

    @property
    def shards(self) -> Path:
        return self.root / "shards"

    @property
    def manifest(self) -> Path:
        return self.shards / "manifest.json"

    @property
    def shards_uri(self) -> str:
        return self.uri(self.shards)

    @property
    def manifest_uri(self) -> str:
        return self.uri(self.manifest)

    def model(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"

    @property
    def ray_storage_uri(self) -> str:
        return self.uri(self.ray_storage)

    @property
    def tune_dir(self) -> Path:
        return self.root / "tune"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def certificate_dir(self) -> Path:
        return self.root / "certificate"

    def cached(self, kind: str, key: str) -> Path:
        return self.cache / "models" / f"{kind}-{key}.pt"

    # -- remote storage ------------------------------------------------------------------------
    def uri(self, path: Path) -> str:
        """Where a layout path lives: the same relative path under storage.uri, or the path itself."""
        if not self.remote:
            return str(path)
        return storage.join(self.remote, *Path(path).relative_to(self.root).parts)

    def publish(self, path: Path) -> None:
        """Upload a local output (file, or every file of a folder) to storage.uri."""
        if not self.remote:
            return
        files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file())
        for f in files:
            storage.upload_file(f, self.uri(f))

    def fetch(self, path: Path) -> Path:
        """The local copy of a layout file, downloaded from storage.uri when that is where it lives."""
        if self.remote and storage.is_file(self.uri(path)):
            storage.download_file(self.uri(path), path)
        return path

    def exists(self, path: Path) -> bool:
        if not self.remote:
            return path.exists()
        return storage.is_file(self.uri(path))


def layout(cfg: RunConfig) -> Layout:
    remote = storage.normalize(cfg.storage.uri) if cfg.storage.uri else None
    return Layout(cfg.workdir_path, cfg.cache_path, remote)


def unwritable(path: Path, exc: OSError) -> StorageError:
    """The one line for a work dir (or model cache) that cannot be created or written."""
    return StorageError("work dir is not writable", where=str(path), seen=exc.strerror or type(exc).__name__)


def check_workdir(cfg: RunConfig) -> Layout:
    """Fail early, before any work, when the work dir (or storage.uri) cannot be written."""
    lay = layout(cfg)
    for d in (lay.root, lay.cache):
        try:
            d.mkdir(parents=True, exist_ok=True)
            probe = d / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise unwritable(d, e) from None
    if lay.remote:
        storage.check_writable(lay.remote)
    return lay
