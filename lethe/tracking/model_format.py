"""How lethe stores a model in the MLflow registry: a lethe checkpoint plus a models-from-code pyfunc.

A registered version is an MLflow model with one flavour, python_function, whose code is
`lethe/tracking/pyfunc_model.py` (models from code: the file is copied, not pickled) and whose one
artifact, `checkpoint`, is a lethe checkpoint (`lethe.models.checkpoint`: architecture + state dict,
read with `torch.load(weights_only=True)`). Nothing in a version is a pickle of a Python object.

Two readers:
  * lethe itself (`load_lethe_model`) reads the MLmodel file (YAML), downloads the checkpoint and
    builds the model from the stored arch: it never runs the version's code and never unpickles.
    A version that is not in this format (say one logged with mlflow.pytorch) is refused.
  * a serving team may `mlflow.pyfunc.load_model(uri).predict(...)`: `LetheCheckpointModel` loads the
    same checkpoint the same way. Input as the signature says: image-to-image families take
    {"images": (B, C, H, W) float32 in [0, 1], "mask": (B or 1, 1, H, W) float32, 1 = hidden} and
    return the model's single-pass prediction (B, C, H, W); generators take latents (B, latent_dim)
    float32 and return samples (B, C, H, W) in [0, 1].
"""

from __future__ import annotations

import posixpath
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.models import Model, infer_signature
from mlflow.pyfunc import PythonModel

from lethe.errors import CheckpointError
from lethe.models import get_family
from lethe.models.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from lethe.models.layers import I2IModel

CHECKPOINT_ARTIFACT = "checkpoint"  # the key in the pyfunc flavour's `artifacts`
CHECKPOINT_FILE = "checkpoint.pt"
PRETRAINED_ARTIFACT = "pretrained"  # families with a folder format: the save_pretrained folder
I2I_INPUTS = ("images", "mask")
FORMAT_KEY = "lethe_format"  # in the MLmodel's metadata
FAMILY_KEY = "lethe_family"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
_PYFUNC = "python_function"
# MLflow's warning about what we chose: no input example (it would be pixels in the store).
_CHOSEN_WARNINGS = (r".*input example was not provided",)
_EXPECTED = f"a python_function model from code with a {FORMAT} checkpoint artifact (registered by lethe)"


def _require_lethe_model(model: torch.nn.Module, name: str) -> None:
    model = getattr(model, "module", model)  # DDP
    family, arch = getattr(model, "family", None), getattr(model, "arch", None)
    if not isinstance(family, str) or not family or not callable(getattr(arch, "to_dict", None)):
        raise CheckpointError(
            "cannot register a model that is not a lethe model",
            where=name,
            expected="a model of a lethe family (with .family and .arch)",
            seen=type(model).__name__,
        )


def _first_tensor(value: Any) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for item in value:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"expected a tensor or a tuple holding one, got {type(value).__name__}")


def signature(model: torch.nn.Module, example_input: torch.Tensor | tuple) -> Any:
    """Signature of what the pyfunc's predict takes and returns (shapes and dtypes only).

    Image-to-image models: named inputs `images` and `mask` (the example's (images, mask));
    generators: one unnamed latent tensor. No input example is logged: it would put pixels in
    the store.
    """
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(*args)
    finally:
        model.train(was_training)
    y = _first_tensor(output).detach().cpu().numpy()
    if isinstance(getattr(model, "module", model), I2IModel):
        if len(args) != len(I2I_INPUTS):
            raise TypeError(f"an image-to-image model's example is (images, mask), got {len(args)} tensors")
        return infer_signature(
            {k: a.detach().cpu().numpy() for k, a in zip(I2I_INPUTS, args, strict=True)}, y
        )
    return infer_signature(_first_tensor(args).detach().cpu().numpy(), y)


def log_lethe_model(
    model: torch.nn.Module, name: str, example_input: torch.Tensor | tuple, pip_requirements: list[str]
) -> Any:
    """Log `model` in the active run as checkpoint + models-from-code pyfunc; returns MLflow's ModelInfo.

    The checkpoint is read back with lethe's weights-only loader before anything is logged, so a
    version that lethe cannot load is never registered.
    """
    _require_lethe_model(model, name)
    family = getattr(model, "module", model).family
    with tempfile.TemporaryDirectory(prefix="lethe-register-") as tmp:
        path = save_checkpoint(Path(tmp) / CHECKPOINT_FILE, model, {"registered_model": name})
        load_checkpoint(path, expected_kind=family)
        artifacts = {CHECKPOINT_ARTIFACT: str(path)}
        save_folder = getattr(get_family(family), "save_folder", None)
        if save_folder is not None:
            # the format the model came in: its users load artifacts/pretrained with from_pretrained
            artifacts[PRETRAINED_ARTIFACT] = str(save_folder(model, Path(tmp) / PRETRAINED_ARTIFACT))
        with warnings.catch_warnings():
            for text in _CHOSEN_WARNINGS:
                warnings.filterwarnings("ignore", message=text, category=UserWarning)
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts=artifacts,
                signature=signature(model, example_input),
                pip_requirements=pip_requirements,
                metadata={FORMAT_KEY: FORMAT, FAMILY_KEY: getattr(model, "module", model).family},
            )


def _describe(mlmodel: Model) -> str:
    flavors = []
    for flavor, conf in sorted(mlmodel.flavors.items()):
        loader = conf.get("loader_module") if isinstance(conf, dict) else None
        flavors.append(f"{flavor} ({loader})" if loader else flavor)
    fmt = (mlmodel.metadata or {}).get(FORMAT_KEY)
    return f"flavors {', '.join(flavors) or 'none'}; {FORMAT_KEY} {fmt!r}"


def checkpoint_path_in(mlmodel: Model, where: str) -> str:
    """The checkpoint's path inside the model directory, or CheckpointError: not a lethe version."""
    pyfunc = mlmodel.flavors.get(_PYFUNC) or {}
    artifact = (pyfunc.get("artifacts") or {}).get(CHECKPOINT_ARTIFACT) or {}
    rel = artifact.get("path") if isinstance(artifact, dict) else None
    is_lethe = (
        (mlmodel.metadata or {}).get(FORMAT_KEY) == FORMAT
        and set(mlmodel.flavors) == {_PYFUNC}
        and pyfunc.get("model_code_path")
        and isinstance(rel, str)
    )
    if not is_lethe:
        raise CheckpointError(
            "registered model version is not a lethe checkpoint (refused, not unpickled)",
            where=where,
            expected=_EXPECTED,
            seen=_describe(mlmodel),
        )
    norm = posixpath.normpath(rel)
    if norm.startswith(("/", "..")) or posixpath.isabs(rel):
        raise CheckpointError("checkpoint artifact path leaves the model directory", where=where, seen=rel)
    return norm


def _version_source(model_uri: str, tracking_uri: str) -> str:
    """Where the artifacts of models:/NAME/VERSION (or models:/NAME@ALIAS) are stored.

    Resolved with a client of this store rather than by mlflow.artifacts.download_artifacts on the
    models:/ URI: that goes through the process-wide registry URI, and in a process that never set one
    MLflow created ./mlflow.db in the working directory."""
    from mlflow.tracking import MlflowClient

    from lethe.config.runtime import parse_source_model

    name, version, alias = parse_source_model(model_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    if version is None:
        version = str(client.get_model_version_by_alias(name, alias).version)
    return client.get_model_version_download_uri(name, version)


def _download(model_uri: str, rel: str, dst: str, tracking_uri: str, what: str) -> str:
    try:
        source = _version_source(model_uri, tracking_uri)
        return mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rstrip('/')}/{rel}", dst_path=dst, tracking_uri=tracking_uri
        )
    except Exception as exc:  # noqa: BLE001 - any failure here is one line to the user
        raise CheckpointError(
            f"cannot download the registered model version's {what}",
            where=model_uri,
            expected=_EXPECTED,
            seen=str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
        ) from exc


def load_lethe_model(model_uri: str, tracking_uri: str) -> torch.nn.Module:
    """The lethe model (eval mode) of registry version `model_uri` (models:/NAME/VERSION).

    Reads the MLmodel file (YAML) first and refuses anything that is not a lethe checkpoint model,
    then downloads only the checkpoint and loads it weights-only. `tracking_uri` is the registry
    URI too (lethe keeps both in one store).
    """
    with tempfile.TemporaryDirectory(prefix="lethe-load-") as tmp:
        local = _download(model_uri, "MLmodel", tmp, tracking_uri, "MLmodel file")
        try:
            mlmodel = Model.load(local)
        except Exception as exc:  # noqa: BLE001 - an unreadable MLmodel is not a lethe model
            raise CheckpointError(
                "registered model version has an unreadable MLmodel file", where=model_uri, expected=_EXPECTED
            ) from exc
        rel = checkpoint_path_in(mlmodel, model_uri)
        local = _download(model_uri, rel, str(Path(tmp) / "ckpt"), tracking_uri, "checkpoint")
        try:
            model, _meta = load_checkpoint(local, expected_kind=(mlmodel.metadata or {}).get(FAMILY_KEY))
        except CheckpointError as e:
            raise CheckpointError(e.what, where=model_uri, expected=e.expected, seen=e.seen) from e
    return model.eval()


def download_pretrained(model_uri: str, tracking_uri: str, dst: str | Path) -> Path:
    """The save_pretrained folder of a registered version of a family with a folder format
    (hf-vitmae), downloaded under `dst`: load it with the model's own `from_pretrained`."""
    return Path(
        _download(model_uri, f"artifacts/{PRETRAINED_ARTIFACT}", str(dst), tracking_uri, "pretrained folder")
    )


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "to_numpy"):  # a pandas DataFrame / Series
        value = value.to_numpy(dtype=np.float32)
    return np.ascontiguousarray(np.asarray(value, dtype=np.float32))


class LetheCheckpointModel(PythonModel):
    """The pyfunc of a registered lethe model: the checkpoint loaded weights-only, predict = forward."""

    # Inputs are checked against the logged signature (named tensors), not predict's type hints;
    # without this MLflow warns at class creation, i.e. on every import of lethe.tracking.
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        config = context.model_config or {}
        self.device = torch.device(config.get("device", "cpu"))
        # the serving side loads its own registered version: a plug-in family's module (installed
        # where it serves) is imported
        model, _meta = load_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT], plugin=True)
        self.model = model.to(self.device).eval()

    def _tensors(self, model_input) -> tuple[torch.Tensor, ...]:
        if isinstance(self.model, I2IModel):
            if isinstance(model_input, dict):
                missing = [k for k in I2I_INPUTS if k not in model_input]
                if missing:
                    raise ValueError(f"image-to-image input needs keys {I2I_INPUTS}, missing {missing}")
                parts = [model_input[k] for k in I2I_INPUTS]
            elif isinstance(model_input, (tuple, list)) and len(model_input) == len(I2I_INPUTS):
                parts = list(model_input)
            else:
                raise TypeError(f"image-to-image input is a dict with keys {I2I_INPUTS}")
        else:
            parts = [model_input]
        return tuple(torch.from_numpy(_array(p)).to(self.device) for p in parts)

    def predict(self, context, model_input, params=None):
        with torch.no_grad():
            out = self.model(*self._tensors(model_input))
        return _first_tensor(out).cpu().numpy()
