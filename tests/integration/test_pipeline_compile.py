"""`lethe pipeline compile`: the IR YAML loads back with kfp and holds every step, wired as designed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lethe.cli import main
from lethe.config import config_from_json

TASKS = (
    "begin",
    "split",
    "resolve-or-pretrain",
    "oracle",
    "tune",
    "unlearn",
    "evaluate",
    "promote",
    "cleanup",
)


def _all_tasks(doc: dict) -> dict[str, dict]:
    """Every task of the pipeline, whatever DAG (root or exit-handler group) holds it."""
    out = dict(doc["root"]["dag"]["tasks"])
    for comp in doc["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    d = tmp_path_factory.mktemp("compile")
    out = d / "lethe.yaml"
    rc = main(
        [
            "pipeline",
            "compile",
            "--preset",
            "smoke",
            "--workdir",
            str(d / "work"),
            "--alpha",
            "0.3",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    return out, yaml.safe_load(out.read_text())


def test_yaml_loads_back_with_kfp_and_contains_every_step(compiled: tuple[Path, dict]) -> None:
    from kfp.components import load_component_from_file

    from components import LETHE_IMAGE

    path, doc = compiled
    loaded = load_component_from_file(str(path))
    assert loaded.name == "lethe-unlearning"
    assert set(loaded.component_spec.inputs) == {"config_json", "workdir", "tune"}

    tasks = _all_tasks(doc)
    assert set(TASKS) <= set(tasks), sorted(tasks)
    executors = doc["deploymentSpec"]["executors"]
    for name in TASKS:
        comp = doc["components"][tasks[name]["componentRef"]["name"]]
        container = executors[comp["executorLabel"]]["container"]
        assert container["image"] == LETHE_IMAGE, name
        assert "kfp_steps" in " ".join(container["command"]), name


def test_parameters_default_to_the_compiled_config(compiled: tuple[Path, dict]) -> None:
    _, doc = compiled
    params = doc["root"]["inputDefinitions"]["parameters"]
    cfg = config_from_json(params["config_json"]["defaultValue"])
    assert cfg.preset == "smoke" and cfg.unlearn.alpha == 0.3
    assert params["workdir"]["defaultValue"].endswith("/work")
    assert params["tune"]["defaultValue"] is False


def test_cleanup_is_the_exit_handler(compiled: tuple[Path, dict]) -> None:
    _, doc = compiled
    root = doc["root"]["dag"]["tasks"]
    assert set(root) == {"cleanup", "exit-handler-1"}
    exit_task = root["cleanup"]
    assert exit_task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert exit_task["dependentTasks"] == ["exit-handler-1"]
    assert "status" in exit_task["inputs"]["parameters"]  # PipelineTaskFinalStatus
    body = doc["components"][root["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(TASKS) - {"cleanup"} == set(body)


def test_nightly_pipeline_claims_first_and_runs_the_body_only_when_it_claimed(tmp_path: Path) -> None:
    out = tmp_path / "nightly.yaml"
    argv = [
        "pipeline",
        "compile",
        "--preset",
        "smoke",
        "--workdir",
        str(tmp_path / "w"),
        "--output",
        str(out),
    ]
    assert main([*argv, "--model", "faces"]) == 0
    doc = yaml.safe_load(out.read_text())
    comps = doc["components"]
    handler = comps[doc["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]]["dag"]["tasks"]
    assert set(handler) == {"claim", "condition-2"}
    assert handler["claim"]["inputs"]["parameters"]["model"]["runtimeValue"]["constant"] == "faces"
    cond = handler["condition-2"]
    assert cond["dependentTasks"] == ["claim"]
    assert (
        cond["triggerPolicy"]["condition"]
        == "int(inputs.parameter_values['pipelinechannel--claim-Output']) > 0"
    )
    body = comps[cond["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == set(TASKS) - {"cleanup"}
    # Every task of the body runs on the night's configuration (the claim's output), not the pipeline's.
    for name, task in body.items():
        config = task["inputs"]["parameters"]["config_json"]
        assert config["componentInputParameter"] == "pipelinechannel--claim-config_json", name
    cleanup = doc["root"]["dag"]["tasks"]["cleanup"]
    assert cleanup["inputs"]["parameters"]["model"]["runtimeValue"]["constant"] == "faces"


def test_caching_and_retries(compiled: tuple[Path, dict]) -> None:
    _, doc = compiled
    tasks = _all_tasks(doc)
    cached = {n for n in TASKS if tasks[n].get("cachingOptions", {}).get("enableCache")}
    # Keyed on digests + config: the model builders; never the split (data can change under a name)
    # nor anything with side effects (MLflow runs, registry, deletion).
    assert cached == {"resolve-or-pretrain", "oracle"}
    pretrain_inputs = set(tasks["resolve-or-pretrain"]["inputs"]["parameters"])
    assert pretrain_inputs == {"config_json", "workdir", "data_digest", "source_model"}
    assert set(tasks["oracle"]["inputs"]["parameters"]) == {"config_json", "workdir", "retain_digest"}
    for n in TASKS:
        assert tasks[n]["retryPolicy"]["maxRetryCount"] == 2, n


def test_cluster_needs_an_absolute_work_dir_and_bad_output_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.yaml"
    assert (
        main(["pipeline", "compile", "--preset", "smoke", "--workdir", "runs/x", "--output", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "work dir must be an absolute path" in err and not out.exists()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    bad = blocker / "p.yaml"
    assert (
        main(["pipeline", "compile", "--preset", "smoke", "--workdir", str(tmp_path), "--output", str(bad)])
        == 2
    )
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and "cannot write the pipeline file" in lines[0]


def test_run_without_local_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["pipeline", "run", "--preset", "smoke", "--workdir", str(tmp_path)]) == 2
    assert "needs --local" in capsys.readouterr().err


def test_shared_work_dir_volume_is_mounted_in_every_task(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "p.yaml"
    argv = [
        "pipeline",
        "compile",
        "--preset",
        "smoke",
        "--workdir",
        "/mnt/lethe/nightly",
        "--output",
        str(out),
    ]
    assert main([*argv, "--pvc", "lethe-work"]) == 0
    pipeline_doc, platform_doc = list(yaml.safe_load_all(out.read_text()))
    executors = platform_doc["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(pipeline_doc["deploymentSpec"]["executors"])  # all nine
    for spec in executors.values():
        (mount,) = spec["pvcMount"]
        assert mount["mountPath"] == "/mnt/lethe"  # the work dir's parent: the model cache is there too
        assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "lethe-work"

    assert main([*argv, "--pvc", "lethe-work", "--pvc-mount", "/data"]) == 2
    assert "work dir must lie on the mounted volume" in capsys.readouterr().err
