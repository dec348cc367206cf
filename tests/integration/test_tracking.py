"""Tracker against real MLflow stores: a SQLite file in a temp dir, and a real `mlflow server`."""

from __future__ import annotations

import itertools
import json
import os
import socket
import time
from pathlib import Path

import mlflow
import mlflow.pytorch
import pytest
import torch
import yaml
from mlflow import MlflowClient

from lethe import masks
from lethe.errors import CheckpointError
from lethe.models import GAN, GANArch
from lethe.models.checkpoint import FORMAT
from lethe.tracking import Tracker, TrackingError, flatten_params, run_url
from lethe.tracking.mlflow_tracker import PARENT_RUN_TAG, STEP_TAG

_names = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


def _i2i_example(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """What lethe/pipeline/i2i.py promotion() passes: random images and the centre-box mask, batch 4."""
    h, w, c = model.arch.height, model.arch.width, model.arch.channels
    mask = masks.expand(masks.box_mask(h, w, 0.4, model.mask_cell), 4).contiguous()
    return torch.rand(4, c, h, w), mask


def _tiny_gan() -> GAN:
    torch.manual_seed(0)
    model = GAN(GANArch(28, 28, 1, latent_dim=8, ch=8, disc_ch=8))
    # A few discriminator calls in train mode move spectral norm's power-iteration vectors (u, v)
    # away from their initial values, so the round trip has to carry them, not rebuild them.
    for _ in range(3):
        model.discriminate(torch.rand(2, 1, 28, 28))
    return model.eval()


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


pytestmark = pytest.mark.usefixtures("restore_mlflow_globals")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One database for the module: creating a fresh SQLite store runs every migration (~2 s).
    return tmp_path_factory.mktemp("tracking_store")


@pytest.fixture
def tracker(store_dir: Path) -> Tracker:
    return Tracker(f"sqlite:///{store_dir / 'mlflow.db'}", _unique("exp"))


def test_pipeline_with_steps_records_everything_next_to_the_db(
    tracker: Tracker, store_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    artifact = tmp_path / "note.txt"
    artifact.write_text("hello")

    params = {"method": "encoder_noise", "hp": {"alpha": 0.2, "lr": 5e-4}, "classes": ["Trouser"]}
    with tracker.pipeline_run("pipeline", params, {"lethe.preset": "smoke"}) as parent_id:
        with tracker.step("split", {"seed": 0}) as split_id:
            tracker.log_dataset("forget", "sha256:aaaa", 6000, "/usr/share/datasets/fashion-mnist", "forget")
            tracker.log_dataset("retain", "sha256:bbbb", 54000, "s3://bucket/retain", "retain")
            tracker.log_metrics({"rows": 60000.0, "skipped_none": None, "skipped_nan": float("nan")})
        with tracker.step("unlearn") as unlearn_id:
            for i in range(3):
                tracker.log_metrics({"loss": 1.0 / (i + 1), "inf": float("inf")}, step=i)
            tracker.log_artifact(artifact, "notes")
            tracker.log_dict({"forget_count": 6000}, "report.json")
            tracker.set_tags({"lethe.outcome": "ok"})

    client = MlflowClient(tracking_uri=tracker.tracking_uri, registry_uri=tracker.tracking_uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params == {
        "method": "encoder_noise",
        "hp.alpha": "0.2",
        "hp.lr": "0.0005",
        "classes": "['Trouser']",
    }
    assert parent.data.tags["lethe.preset"] == "smoke"
    assert PARENT_RUN_TAG not in parent.data.tags

    split = client.get_run(split_id)
    assert split.info.status == "FINISHED"
    assert split.data.tags[PARENT_RUN_TAG] == parent_id
    assert split.data.tags[STEP_TAG] == "split"
    assert split.data.params == {"seed": "0"}
    assert split.data.metrics == {"rows": 60000.0}

    inputs = {d.dataset.name: d for d in split.inputs.dataset_inputs}
    assert set(inputs) == {"forget", "retain"}
    forget = inputs["forget"]
    assert forget.dataset.digest == "sha256:aaaa"
    assert json.loads(forget.dataset.source) == {"uri": "/usr/share/datasets/fashion-mnist"}
    assert forget.dataset.schema is None and forget.dataset.profile is None  # metadata only
    tags = {t.key: t.value for t in forget.tags}
    assert tags["count"] == "6000" and tags["mlflow.data.context"] == "forget"
    assert "s3://bucket/retain" in inputs["retain"].dataset.source

    unlearn = client.get_run(unlearn_id)
    assert unlearn.data.tags[PARENT_RUN_TAG] == parent_id
    assert unlearn.data.tags["lethe.outcome"] == "ok"
    assert "inf" not in unlearn.data.metrics
    assert [m.value for m in client.get_metric_history(unlearn_id, "loss")] == [1.0, 0.5, 1.0 / 3]
    assert {f.path for f in client.list_artifacts(unlearn_id)} == {"notes", "report.json"}

    # Artifacts sit next to the database, not in ./mlruns of whatever directory we ran in.
    assert unlearn.info.artifact_uri.startswith((store_dir / "mlartifacts").as_uri())
    assert (
        store_dir / "mlartifacts" / unlearn_id / "artifacts" / "notes" / "note.txt"
    ).read_text() == "hello"
    assert not (cwd / "mlruns").exists()
    assert list(cwd.iterdir()) == []


def test_register_model_creates_versions_with_tags(
    tracker: Tracker, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = _unique("lethe-mae")
    model = tiny_model("mae")
    example = _i2i_example(model)
    with tracker.pipeline_run("pipeline", {}, {}):
        with tracker.step("register") as step_id:
            v1 = tracker.register_model(
                model, name, example, {"method": "encoder_noise", "alpha": "0.2"}, "first"
            )
            v2 = tracker.register_model(model, name, example, {"method": "max_loss", "forget_digest": "abc"})
    assert (v1, v2) == ("1", "2")

    versions = {v.version: v for v in (tracker.find_versions(name))}
    assert set(versions) == {1, 2} or set(versions) == {"1", "2"}
    first = tracker.client.get_model_version(name, "1")
    second = tracker.client.get_model_version(name, "2")
    assert first.tags == {"method": "encoder_noise", "alpha": "0.2"}
    assert first.description == "first"
    assert second.tags == {"method": "max_loss", "forget_digest": "abc"}
    assert first.run_id == second.run_id == step_id
    assert first.status == "READY"

    # Loadable, and the signature documents the (images, mask) input (shapes and dtypes, no data).
    _assert_same_weights(tracker.load_registered_model(name, "2"), model)
    sig = mlflow.models.get_model_info(f"models:/{name}/2").signature
    inputs = {spec["name"]: spec["tensor-spec"] for spec in sig.inputs.to_dict()}
    assert {k: tuple(v["shape"]) for k, v in inputs.items()} == {
        "images": (-1, 1, 16, 16),
        "mask": (-1, 1, 16, 16),
    }
    assert tuple(sig.outputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 1, 16, 16)
    assert not (tmp_path / "mlruns").exists()


def test_registered_version_holds_no_pickle(
    tracker: Tracker, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = _unique("lethe-nopickle")
    model = tiny_model("mae")
    with tracker.step("register"):
        version = tracker.register_model(model, name, _i2i_example(model), {"method": "encoder_noise"})
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp_path / "dl")
        )
    )
    files = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth"))], files
    assert not (local / "data").exists()  # where mlflow.pytorch puts model.pth
    mlmodel = yaml.safe_load((local / "MLmodel").read_text())
    assert set(mlmodel["flavors"]) == {"python_function"}
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert Path(pyfunc["model_code_path"]).name == "pyfunc_model.py" and "pyfunc_model.py" in files
    assert "python_model" not in pyfunc  # the cloudpickled PythonModel of the non-code flavour
    assert mlmodel["metadata"] == {"lethe_format": FORMAT, "lethe_family": "mae"}
    ckpt_rel = pyfunc["artifacts"]["checkpoint"]["path"]
    assert ckpt_rel in files
    payload = torch.load(local / ckpt_rel, map_location="cpu", weights_only=True)
    assert (payload["format"], payload["kind"], payload["arch"]) == (FORMAT, "mae", model.arch.to_dict())
    for key, tensor in model.state_dict().items():
        assert torch.equal(payload["state_dict"][key], tensor), key


def test_round_trip_is_bit_identical_for_a_gan_with_spectral_norm(
    tracker: Tracker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.nn.utils import parametrize

    monkeypatch.chdir(tmp_path)
    name = _unique("lethe-gan")
    model = _tiny_gan()
    z, x = torch.randn(3, 8), torch.rand(3, 1, 28, 28)
    with tracker.pipeline_run("pipeline", {}, {}):
        with tracker.step("register"):
            version = tracker.register_model(model, name, (torch.randn(4, 8),), {"method": "latent_feature"})
    loaded = tracker.load_registered_model(name, version)
    assert isinstance(loaded, GAN) and loaded.arch == model.arch
    _assert_same_weights(loaded, model)
    # spectral norm survives as a parametrization on both sides (the state dict keeps u, v, original)
    assert parametrize.is_parametrized(model.disc_head) and parametrize.is_parametrized(loaded.disc_head)
    with torch.no_grad():
        assert torch.equal(loaded(z), model(z))
        assert torch.equal(loaded.discriminate(x), model.discriminate(x))
    # and the pyfunc a serving team loads generates the same samples from latents
    samples = mlflow.pyfunc.load_model(f"models:/{name}/{version}").predict(z.numpy())
    with torch.no_grad():
        assert torch.equal(torch.from_numpy(samples), model(z))


def test_pyfunc_predict_of_an_i2i_model_on_the_example_input(
    tracker: Tracker, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = _unique("lethe-serve")
    model = tiny_model("mae")
    images, mask = _i2i_example(model)
    with tracker.step("register"):
        version = tracker.register_model(model, name, (images, mask), {"method": "encoder_noise"})
    served = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    out = served.predict({"images": images.numpy(), "mask": mask.numpy()})
    with torch.no_grad():
        want = model.eval()(images, mask)
    assert out.shape == (4, 1, 16, 16) and out.dtype == want.numpy().dtype
    assert torch.equal(torch.from_numpy(out), want)
    # one mask for the whole batch is broadcast, like the model itself does
    one = served.predict({"images": images.numpy(), "mask": mask[:1].numpy()})
    assert torch.equal(torch.from_numpy(one), want)
    with pytest.raises(Exception, match="mask"):
        served.predict({"images": images.numpy()})


def test_version_logged_with_mlflow_pytorch_is_refused_not_unpickled(
    tracker: Tracker, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    name = _unique("lethe-foreign")
    with tracker.step("someone else's registration"):
        mlflow.pytorch.log_model(
            tiny_model("mae"),
            name="model",
            serialization_format="pickle",
            pip_requirements=["torch"],
            registered_model_name=name,
        )

    def no_unpickling(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the registry loader tried to unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(mlflow.pytorch, "load_model", no_unpickling)
    with pytest.raises(CheckpointError) as e:
        tracker.load_registered_model(name, "1")
    line = e.value.line()
    assert "\n" not in line
    assert line.startswith("registered model version is not a lethe checkpoint")
    assert f"models:/{name}/1" in line  # which model
    assert f"expected a python_function model from code with a {FORMAT} checkpoint" in line
    assert "got flavors python_function (mlflow.pytorch), pytorch" in line  # what was seen


def test_registering_a_module_that_is_not_a_lethe_model_is_refused(tracker: Tracker) -> None:
    name = _unique("lethe-linear")
    with tracker.step("register"):
        with pytest.raises(CheckpointError, match="not a lethe model.*got Linear"):
            tracker.register_model(torch.nn.Linear(4, 2), name, torch.randn(2, 4), {"method": "x"})
    assert tracker.find_versions(name) == []


def test_failure_inside_step_fails_both_runs_and_registers_nothing(tracker: Tracker) -> None:
    name = _unique("lethe-never")
    ids: dict[str, str] = {}
    with pytest.raises(ValueError, match="boom"):
        with tracker.pipeline_run("pipeline", {"a": 1}, {}) as parent_id:
            ids["parent"] = parent_id
            with tracker.step("unlearn") as step_id:
                ids["step"] = step_id
                raise ValueError("boom")
            tracker.register_model(torch.nn.Linear(4, 2), name, torch.randn(2, 4), {})  # never reached
    assert tracker.client.get_run(ids["parent"]).info.status == "FAILED"
    assert tracker.client.get_run(ids["step"]).info.status == "FAILED"
    assert tracker.find_versions(name) == []
    assert mlflow.active_run() is None


def test_rejected_registration_leaves_no_version(
    tracker: Tracker, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = _unique("lethe-rollback")
    model = tiny_model("mae")

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("registry refused the tags")

    # Fault injection after the version row exists: the registry itself stays real.
    monkeypatch.setattr(tracker, "_check_version", fail)
    with tracker.step("register"):
        with pytest.raises(RuntimeError, match="refused"):
            tracker.register_model(model, name, _i2i_example(model), {"method": "x"})
    assert tracker.find_versions(name) == []


def test_step_without_pipeline_is_a_top_level_run(tracker: Tracker) -> None:
    with tracker.step("unlearn", {"alpha": 0.2}) as run_id:
        tracker.log_metrics({"loss": 0.5})
    run = tracker.client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert PARENT_RUN_TAG not in run.data.tags
    assert run.data.tags[STEP_TAG] == "unlearn"
    assert run.data.params == {"alpha": "0.2"}


def test_step_attaches_to_a_parent_run_from_another_process(tracker: Tracker) -> None:
    # A KFP component gets the pipeline run id as an argument; the run is RUNNING elsewhere.
    parent = tracker.client.create_run(tracker.experiment_id, run_name="pipeline-elsewhere")
    with tracker.step("evaluate", parent_run_id=parent.info.run_id) as run_id:
        pass
    assert tracker.client.get_run(run_id).data.tags[PARENT_RUN_TAG] == parent.info.run_id
    tracker.client.set_terminated(parent.info.run_id)


def test_unreachable_server_fails_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once closed
    start = time.monotonic()
    with pytest.raises(TrackingError, match="cannot reach the MLflow server"):
        Tracker(f"http://127.0.0.1:{port}", "exp")
    assert time.monotonic() - start < 10  # MLflow's own retries would take about 4 minutes


def test_records_outside_a_run_are_refused(tracker: Tracker) -> None:
    # MLflow's fluent API would silently start a stray run here.
    with pytest.raises(TrackingError, match="needs an active run"):
        tracker.log_metrics({"loss": 1.0})
    with pytest.raises(TrackingError):
        tracker.log_dataset("forget", "d", 1, "/x", "forget")
    assert mlflow.active_run() is None


def test_deleted_experiment_is_reported(tracker: Tracker) -> None:
    tracker.client.delete_experiment(tracker.experiment_id)
    with pytest.raises(TrackingError, match="is deleted"):
        Tracker(tracker.tracking_uri, tracker.experiment)


def test_relative_sqlite_uri_is_pinned_to_an_absolute_path(
    store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(store_dir)
    tracker = Tracker("sqlite:///mlflow.db", _unique("exp"))
    assert tracker.tracking_uri == f"sqlite:///{store_dir / 'mlflow.db'}"


def test_flatten_params_cleans_keys_and_truncates_values() -> None:
    flat = flatten_params({"a": {"b": {"c": 1}}, "bad key!": None, "long": "x" * 7000, "/abs": 2})
    assert flat["a.b.c"] == "1"
    assert flat["bad key_"] == "None"
    assert len(flat["long"]) == 6000 and flat["long"].endswith("[truncated]")
    assert flat["_abs"] == "2"


def test_run_url_only_for_servers() -> None:
    assert run_url("sqlite:////tmp/x.db", "1", "abc") is None
    assert run_url("http://127.0.0.1:5000/", "1", "abc") == "http://127.0.0.1:5000/#/experiments/1/runs/abc"


@pytest.mark.slow
def test_against_a_real_mlflow_server(
    mlflow_server: str, tiny_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = Tracker(mlflow_server, _unique("exp"))
    artifact = tmp_path / "grid.txt"
    artifact.write_text("pixels would go here, but not forget-set ones")
    name = _unique("lethe-server")
    model = tiny_model("mae")
    with tracker.pipeline_run("pipeline", {"family": "mae"}, {}) as parent_id:
        with tracker.step("register") as step_id:
            tracker.log_artifact(artifact, "report")
            tracker.log_dataset("forget", "sha256:cccc", 12, "s3://bucket/forget", "forget")
            version = tracker.register_model(model, name, _i2i_example(model), {"method": "encoder_noise"})

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert client.get_run(parent_id).info.status == "FINISHED"
    step = client.get_run(step_id)
    assert step.data.tags[PARENT_RUN_TAG] == parent_id
    assert step.inputs.dataset_inputs[0].dataset.digest == "sha256:cccc"
    assert [f.path for f in client.list_artifacts(step_id, "report")] == ["report/grid.txt"]
    assert version == "1"
    mv = client.get_model_version(name, version)
    assert mv.tags == {"method": "encoder_noise"} and mv.run_id == step_id
    assert mv.run_link == run_url(mlflow_server, tracker.experiment_id, step_id)
    _assert_same_weights(tracker.load_registered_model(name, version), model)
    # Proxied artifacts: the client wrote nothing locally.
    assert not (tmp_path / "mlruns").exists()
