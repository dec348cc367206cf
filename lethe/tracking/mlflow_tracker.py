"""MLflow tracking for lethe: with model_format.py (the registry's model format) the only modules of
the package that import mlflow.

Everything the pipeline records goes through `Tracker`: one parent run per pipeline, one nested child
run per step, parameters, metrics, artifacts, dataset lineage (digests and counts only) and model
registration. Callers hand over counts, digests and paths, never forget-set ids or pixels, and this
module never adds any: models are logged without an input example, datasets without data or schema.
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import re
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import mlflow
import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

if TYPE_CHECKING:
    import torch

from lethe.errors import LetheError
from lethe.tracking.retry import DEFAULT_RETRY_S, ServerRetry, TrackingError, reason

_log = logging.getLogger(__name__)

STEP_TAG = "lethe.step"
PARENT_RUN_TAG = "mlflow.parentRunId"
# MLflow's own limits (mlflow.utils.validation); values past them are rejected, not truncated.
_MAX_PARAM_VALUE = 6000
_MAX_TAG_VALUE = 8000
_MAX_KEY = 250
_TRUNCATED = "...[truncated]"
# Keys MLflow accepts on every OS (colons are refused on Windows, so we drop them too).
_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


_MAX_DIGEST = 32


def _quiet_mlflow() -> None:
    # MLflow logs store migrations (alembic), "registered model ... created" and progress bars at
    # INFO on every run; in a CLI that prints report.json's path last this is noise.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # Against a server, end_run writes "View run ... at: URL" to stdout; the CLI's last stdout line
    # must be report.json's path, and callers get the link from run_url() instead.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # urllib3 logs each of MLflow's inner retries; lethe's own retry line says the same once.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _is_http(uri: str) -> bool:
    return urlparse(uri).scheme in ("http", "https")


def _check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds on a wrong server address: MLflow's client retries for about 4 minutes."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # something answers (an auth proxy may refuse /health); let MLflow judge the rest
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            "cannot reach the MLflow server",
            where=uri,
            expected="a running `mlflow server` (or a sqlite:/// tracking URI)",
            seen=str(reason),
        ) from exc


def _sqlite_db_path(uri: str) -> Path | None:
    """Path of the database file of a `sqlite:///...` URI (None for other stores or in-memory)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/x.db -> path "//abs/x.db"; sqlite:///rel.db -> "/rel.db" (relative to the CWD).
    raw = unquote(parsed.path)
    if raw.startswith("//"):
        path = Path(raw[1:])
    else:
        path = Path(raw.lstrip("/"))
    if str(path) in ("", ":memory:"):
        return None
    return path.resolve()


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """Link to a run in the MLflow UI, or None when there is no server (SQLite, file stores)."""
    if not _is_http(tracking_uri):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _clean_key(key: str) -> str:
    """Make `key` acceptable to MLflow as a param / metric name instead of failing the whole batch."""
    cleaned = _BAD_KEY_CHARS.sub("_", str(key))[:_MAX_KEY]
    norm = posixpath.normpath(cleaned) if cleaned else cleaned
    if not cleaned or norm != cleaned or norm == "." or norm.startswith(("..", "/")):
        # MLflow treats names with slashes as file paths in places; a name that normalises to
        # another name is refused, so flatten the slashes.
        cleaned = cleaned.replace("/", "_").replace("..", "__") or "_"
    return cleaned


def _truncate(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - len(_TRUNCATED)] + _TRUNCATED


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}; values stringified and cut to MLflow's length limit."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, full))
        else:
            flat[_clean_key(full)] = _truncate(str(value), _MAX_PARAM_VALUE)
    return flat


def _finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if value is None:
            continue
        try:
            number = float(value)  # also takes numpy scalars and 0-d tensors
        except (TypeError, ValueError):
            _log.warning("metric %r is not a number (%s); not logged", key, type(value).__name__)
            continue
        if math.isfinite(number):
            out[_clean_key(key)] = number
    return out


class _UriSource(DatasetSource):
    """A dataset source that only records where the data came from, as the user wrote it.

    MLflow's own sources validate or resolve their URI (HTTP, local artifact repos) and none takes
    a bare dataset name such as "fashion-mnist"; lineage only needs the string.
    """

    def __init__(self, uri: str) -> None:
        self._uri = uri

    @property
    def uri(self) -> str:
        return self._uri

    @staticmethod
    def _get_source_type() -> str:
        return "uri"

    def load(self) -> Any:
        raise NotImplementedError("lethe records dataset sources for lineage only")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> _UriSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self._uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> _UriSource:
        return cls(str(source_dict["uri"]))


def _pip_requirements() -> list[str]:
    # Given explicitly so MLflow skips its slow environment inference (it imports the model in a
    # subprocess). The local build tag (+cpu, +cu128) is dropped so a GPU image can load the model.
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={np.__version__}"]


class Tracker:
    """Records one pipeline (parent run) and its steps (child runs) in one MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment: str, retry_s: float = DEFAULT_RETRY_S) -> None:
        _quiet_mlflow()
        db_path = _sqlite_db_path(tracking_uri)
        if db_path is not None:
            # Normalise to an absolute URI: a relative sqlite path would follow later chdirs.
            db_path.parent.mkdir(parents=True, exist_ok=True)
            tracking_uri = f"sqlite:///{db_path}"
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        if _is_http(tracking_uri):
            _check_reachable(tracking_uri)
        remote = _is_http(tracking_uri) or urlparse(tracking_uri).scheme == "databricks"
        self._retry = ServerRetry(tracking_uri, retry_s, remote)
        self._call = self._retry.call
        self._activate()
        try:
            self.client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            self.experiment_id = self._call("experiment lookup", lambda: self._ensure_experiment(db_path))
        except (MlflowException, ImportError) as exc:
            # ImportError: a database URI whose driver (psycopg2, pymysql, ...) is not installed.
            raise TrackingError(
                "cannot use the MLflow tracking store",
                where=tracking_uri,
                expected="a reachable MLflow server or a writable sqlite:/// database",
                seen=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
            ) from exc

    # -- setup ---------------------------------------------------------------------------------

    def _activate(self) -> None:
        # The fluent API (start_run, pyfunc.log_model) reads a process-global URI; set it again
        # before each run so two Trackers in one process do not write into each other's store.
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)

    def _ensure_experiment(self, db_path: Path | None) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            # Without a server, MLflow's default artifact root is ./mlruns of whatever directory
            # the process runs in; keep artifacts next to the database instead. A server decides
            # its own artifact root (--artifacts-destination), so leave it unset there.
            location = (db_path.parent / "mlartifacts").as_uri() if db_path is not None else None
            try:
                return self.client.create_experiment(self.experiment, artifact_location=location)
            except MlflowException as exc:
                # Another process created it between our lookup and create.
                exp = self.client.get_experiment_by_name(self.experiment)
                if exp is None:
                    raise exc from None
        if exp.lifecycle_stage != "active":
            raise TrackingError(
                f"MLflow experiment {self.experiment!r} is deleted",
                where=self.tracking_uri,
                expected="an active experiment (restore it with `mlflow experiments restore` or pick another)",
            )
        if db_path is not None and exp.artifact_location.startswith(("./", "mlruns")):
            _log.warning(
                "experiment %r stores artifacts at %s, relative to the working directory",
                self.experiment,
                exp.artifact_location,
            )
        return exp.experiment_id

    # -- runs ----------------------------------------------------------------------------------

    @contextmanager
    def _run(self, run_name: str, tags: dict[str, str], parent_run_id: str | None) -> Iterator[str]:
        self._activate()
        active = self._call(
            "start run",
            lambda: mlflow.start_run(
                experiment_id=self.experiment_id,
                run_name=run_name,
                nested=parent_run_id is not None,
                parent_run_id=parent_run_id,
                tags={_clean_key(k): _truncate(str(v), _MAX_TAG_VALUE) for k, v in tags.items()},
            ),
        )
        run_id = active.info.run_id
        try:
            yield run_id
        except BaseException as exc:
            # Ctrl-C and SIGTERM-turned-exceptions are "killed", everything else "failed"; either
            # way the run must not stay RUNNING forever in the UI.
            killed = isinstance(exc, (KeyboardInterrupt, SystemExit))
            status = RunStatus.to_string(RunStatus.KILLED if killed else RunStatus.FAILED)
            try:
                self._call("end run", lambda: mlflow.end_run(status))
            except Exception as e:  # noqa: BLE001 - the caller needs the original error, not this one
                _log.warning("could not mark run %s as %s: %s", run_id, status, _one_line(e))
            raise
        else:
            self._call("end run", lambda: mlflow.end_run(RunStatus.to_string(RunStatus.FINISHED)))

    @contextmanager
    def pipeline_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> Iterator[str]:
        """Parent run of a whole pipeline; yields its run id. FAILED if the body raises."""
        with self._run(run_name, tags, parent_run_id=None) as run_id:
            self.log_params(params)
            yield run_id

    @contextmanager
    def step(
        self, name: str, params: dict[str, Any] | None = None, parent_run_id: str | None = None
    ) -> Iterator[str]:
        """Child run (tag lethe.step=name) of the active run; a top-level run when none is active.

        `parent_run_id` attaches the step to a pipeline run started in another process (a KFP
        component, a Ray job); that run must still be RUNNING.
        """
        if parent_run_id is None:
            active = mlflow.active_run()
            parent_run_id = active.info.run_id if active is not None else None
        with self._run(name, {STEP_TAG: name}, parent_run_id=parent_run_id) as run_id:
            if params:
                self.log_params(params)
            yield run_id

    def _require_run(self, what: str) -> str:
        # The fluent API silently starts a new top-level run when none is active; that would
        # scatter a step's records over stray runs, so refuse instead.
        active = mlflow.active_run()
        if active is None:
            raise TrackingError(f"{what} needs an active run", expected="inside pipeline_run() or step()")
        return active.info.run_id

    # -- records -------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        self._require_run("log_params")
        flat = flatten_params(params)
        if flat:
            self._call("log params", lambda: mlflow.log_params(flat, synchronous=True))

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self._require_run("log_metrics")
        clean = _finite_metrics(metrics)
        if clean:
            self._call("log metrics", lambda: mlflow.log_metrics(clean, step=step, synchronous=True))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._require_run("log_artifact")
        path = Path(path)
        log = mlflow.log_artifacts if path.is_dir() else mlflow.log_artifact
        self._call("log artifact", lambda: log(str(path), artifact_path=artifact_path))

    def log_dict(self, d: dict, artifact_file: str) -> None:
        self._require_run("log_dict")
        self._call("log artifact", lambda: mlflow.log_dict(d, artifact_file))

    def log_dataset(
        self,
        name: str,
        digest: str,
        count: int,
        source_uri: str,
        context: str,
        tags: dict[str, str] | None = None,
    ) -> None:
        """Lineage of one data split: name, content digest, row count and where it came from."""
        self._require_run("log_dataset")
        # MLflow caps a dataset digest at 36 characters: the field gets a prefix, a tag the whole.
        dataset = MetaDataset(source=_UriSource(str(source_uri)), name=name, digest=digest[:_MAX_DIGEST])
        all_tags = {"count": str(int(count)), "digest_sha256": digest, **(tags or {})}
        self._call("log dataset", lambda: mlflow.log_input(dataset, context=context, tags=all_tags))

    def set_tags(self, tags: dict[str, str]) -> None:
        self._require_run("set_tags")
        clean = {_clean_key(k): _truncate(str(v), _MAX_TAG_VALUE) for k, v in tags.items()}
        self._call("set tags", lambda: mlflow.set_tags(clean))

    # -- registry ------------------------------------------------------------------------------

    def register_model(
        self,
        model: torch.nn.Module,
        name: str,
        example_input: torch.Tensor | tuple,
        tags: dict[str, str],
        description: str = "",
    ) -> str:
        """Log `model` in the active run and register it as a new version of `name`; returns it.

        Stored as a lethe checkpoint (weights + arch, loaded weights-only) with a models-from-code
        pyfunc around it, never as a pickle (lethe/tracking/model_format.py).
        """
        from lethe.tracking.model_format import log_lethe_model

        run_id = self._require_run("register_model")
        info = self._call(
            "log model", lambda: log_lethe_model(model, name, example_input, _pip_requirements())
        )
        self._call("create registered model", lambda: self._ensure_registered_model(name))
        version_tags = {_clean_key(k): _truncate(str(v), _MAX_TAG_VALUE) for k, v in tags.items()}
        # Tags and description travel in the create request itself: the store writes them in the
        # same transaction as the version, so a bad tag leaves no version behind.
        version = self._call(
            "create model version",
            lambda: self.client.create_model_version(
                name=name,
                source=info.model_uri,
                run_id=run_id,
                tags=version_tags,
                description=description or None,
                model_id=info.model_id,
                run_link=run_url(self.tracking_uri, self.experiment_id, run_id),
            ),
            # A lost answer may hide a version the server did create: reuse it, never make a second.
            before_retry=lambda: self._version_of(name, run_id, info.model_uri),
        )
        try:
            self._call("tag model version", lambda: self._check_version(version, version_tags))
        except BaseException:
            # An untagged version would look promotable to nobody and confuse "latest" queries.
            try:
                self.delete_version(name, str(version.version))
            except Exception as e:  # noqa: BLE001 - the original failure is the one to report
                _log.warning(
                    "could not delete half-registered %s version %s: %s", name, version.version, _one_line(e)
                )
            raise
        return str(version.version)

    def _ensure_registered_model(self, name: str) -> None:
        try:
            self.client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise

    def _version_of(self, name: str, run_id: str, source: str) -> ModelVersion | None:
        escaped = name.replace("'", "\\'")
        found = self.client.search_model_versions(f"name='{escaped}' and run_id='{run_id}'")
        return next((v for v in found if v.source == source), None)

    def _check_version(self, version: ModelVersion, tags: dict[str, str]) -> None:
        # Read-back check: promotion gates select versions by these tags, so any tag the registry
        # did not store with the version is set now (and a failure here rolls the version back).
        missing = {k: v for k, v in tags.items() if version.tags.get(k) != v}
        for key, value in missing.items():
            self.client.set_model_version_tag(version.name, version.version, key, value)

    def find_versions(self, name: str) -> list[ModelVersion]:
        """Every version of registered model `name` (empty when it does not exist)."""
        escaped = name.replace("'", "\\'")
        return list(
            self._call("search versions", lambda: self.client.search_model_versions(f"name='{escaped}'"))
        )

    def run_status(self, run_id: str) -> str | None:
        """RUNNING, FINISHED, FAILED or KILLED; None when the run does not exist (any more)."""
        try:
            return str(self._call("get run", lambda: self.client.get_run(run_id)).info.status)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    # -- pipelines spread over processes (KFP components, Ray jobs) ------------------------------

    def open_run(self, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
        """Start a top-level run that stays RUNNING after this process exits; returns its id.

        The KFP pipeline opens its parent run in one component and closes it in the exit handler;
        every step in between attaches to it with `step(..., parent_run_id=...)`.
        """
        clean = {_clean_key(k): _truncate(str(v), _MAX_TAG_VALUE) for k, v in tags.items()}
        run = self._call(
            "create run", lambda: self.client.create_run(self.experiment_id, run_name=run_name, tags=clean)
        )
        run_id = run.info.run_id
        flat = flatten_params(params)
        if flat:
            from mlflow.entities import Param

            batch = [Param(k, v) for k, v in flat.items()]
            self._call("log params", lambda: self.client.log_batch(run_id, params=batch, synchronous=True))
        return run_id

    def close_run(self, run_id: str, status: str, tags: dict[str, str] | None = None) -> None:
        """End a run opened with `open_run`: status FINISHED, FAILED or KILLED."""
        if tags:
            self.set_run_tags(run_id, tags)
        self._call("end run", lambda: self.client.set_terminated(run_id, status))

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        clean = [RunTag(_clean_key(k), _truncate(str(v), _MAX_TAG_VALUE)) for k, v in tags.items()]
        if clean:
            self._call("set tags", lambda: self.client.log_batch(run_id, tags=clean, synchronous=True))

    def log_artifact_to(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        """Log a file into any run (also a finished one), without touching the active run."""
        self._call(
            "log artifact", lambda: self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)
        )

    # -- registry: source models, aliases, rollback ----------------------------------------------

    def resolve_model_version(self, uri: str) -> ModelVersion:
        """`models:/NAME/VERSION` or `models:/NAME@ALIAS` -> that model version, or one clear error."""
        from lethe.config import parse_source_model

        try:
            name, version, alias = parse_source_model(uri)
        except ValueError:
            raise TrackingError(
                "malformed source model URI", expected="models:/NAME/VERSION or models:/NAME@ALIAS", seen=uri
            ) from None
        try:
            if alias is not None:
                return self._call("get version", lambda: self.client.get_model_version_by_alias(name, alias))
            return self._call("get version", lambda: self.client.get_model_version(name, str(version)))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                raise TrackingError(
                    "unknown source model",
                    where=self.tracking_uri if not _is_http(self.tracking_uri) else uri,
                    expected="a registered model version or alias (see `mlflow models` / the Models page)",
                    seen=uri,
                ) from None
            raise

    def read_run_artifact(self, uri: str) -> bytes:
        """The exact bytes of the artifact `runs:/RUN_ID/PATH` (a certificate, say)."""
        import tempfile

        run_id, _, path = uri.removeprefix("runs:/").partition("/")
        if not uri.startswith("runs:/") or not run_id or not path:
            raise TrackingError("malformed run artifact URI", expected="runs:/RUN_ID/PATH", seen=uri)
        with tempfile.TemporaryDirectory(prefix="lethe-artifact-") as d:
            try:
                local = self._call(
                    "download artifact", lambda: self.client.download_artifacts(run_id, path, d)
                )
            except MlflowException as exc:
                raise TrackingError("cannot read run artifact", where=uri, seen=reason(exc)) from None
            return Path(local).read_bytes()

    def load_registered_model(self, name: str, version: str) -> torch.nn.Module:
        """The lethe model of version `version` of `name`, from its checkpoint, weights-only.

        Runs no code from the registry and unpickles nothing: a version that is not a lethe
        checkpoint (e.g. logged with mlflow.pytorch) is refused with a CheckpointError.
        """
        # The model format imports torch: a task that registers or loads no model (begin, split,
        # cleanup) starts without it, ~1.5 s sooner.
        from lethe.tracking.model_format import load_lethe_model

        self._activate()
        return self._call(
            "load model", lambda: load_lethe_model(f"models:/{name}/{version}", self.tracking_uri)
        )

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version `alias` points at, or None (no such alias or no such registered model)."""
        try:
            return str(
                self._call("get alias", lambda: self.client.get_model_version_by_alias(name, alias)).version
            )
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self._call("set alias", lambda: self.client.set_registered_model_alias(name, alias, str(version)))

    def restore_alias(self, name: str, alias: str, previous: str | None) -> None:
        """Put `alias` back where it was before a failed promotion (or remove it if it was unset)."""
        if previous is None:
            try:
                self._call("delete alias", lambda: self.client.delete_registered_model_alias(name, alias))
            except MlflowException:
                pass
        else:
            self.set_alias(name, alias, previous)

    def delete_version(self, name: str, version: str) -> None:
        self._call("delete version", lambda: self.client.delete_model_version(name, str(version)))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, LetheError):
        return exc.line()
    return reason(exc)
