"""`lethe` as a user runs it: whole smoke pipelines end to end, and every kind of bad input.

Each test starts the real CLI in a subprocess (its own local Ray, MLflow on SQLite in the work dir).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lethe.models import load_checkpoint
from lethe.report import validate_report
from lethe.testing.processes import wait_for_output

FASHION = Path(os.environ.get("LETHE_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
LETHE = [sys.executable, "-m", "lethe.cli"]


def lethe(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*LETHE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def split_cmd(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cwd = next(p for p in work.parents if p.is_dir())  # the work dir may be unreachable on purpose
    return lethe("split", "--preset", "smoke", "--workdir", str(work), *args, cwd=cwd)


def runs_by_status(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(db) as con:
        return dict(con.execute("select status, count(*) from runs group by status").fetchall())


def registered_versions(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db) as con:
        return con.execute("select count(*) from model_versions").fetchone()[0]


def all_text_under(root: Path) -> bytes:
    """Every byte MLflow and the reports wrote: the SQLite store and all artifact files."""
    out = []
    for p in root.rglob("*"):
        if p.is_file() and "shards" not in p.parts and "models" not in p.parts[-2:] and "ray" not in p.parts:
            out.append(p.read_bytes())
    return b"\n".join(out)


# ----------------------------------------------------------------------------------------------
# end to end
# ----------------------------------------------------------------------------------------------
def _run_while_a_second_run_tries_the_same_work_dir(
    argv: list[str], work: Path, cwd: Path
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """Start `lethe *argv`, and once its pretrain step runs, the same command again; wait for both."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
    err_path = cwd / "first-run.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [*LETHE, *argv], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True
        )
        try:
            wait_for_output(proc, err_path, "== pretrain", timeout_s=300)
            second = lethe(*argv, cwd=cwd, timeout=120)
            out, _ = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    first = subprocess.CompletedProcess(proc.args, proc.returncode, out, err_path.read_text(errors="replace"))
    return first, second


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_smoke_run_on_fashion_mnist_end_to_end(tmp_path: Path) -> None:
    work = tmp_path / "work"
    argv = ["run", "--preset", "smoke", "--workdir", str(work), "--forget-classes", "Trouser"]
    # A second run on the same work dir while the first is at work (a schedule overlapping a manual
    # run) is refused in one line and leaves the first run, which then completes, untouched.
    r, second = _run_while_a_second_run_tries_the_same_work_dir(argv, work, tmp_path)
    assert second.returncode == 2 and not second.stdout, second.stderr[-3000:]
    refusals = [ln for ln in second.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(refusals) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"work dir {work} is in use by another lethe run" in refusals[0]
    assert r.returncode == 0, r.stderr[-3000:]
    report_path = Path(r.stdout.strip().splitlines()[-1])
    assert report_path == work / "report" / "report.json"
    report = json.loads(report_path.read_text())
    validate_report(report)
    assert report["dataset"] == "fashion-mnist" and report["family"] == "mae"
    assert report["request"]["kind"] == "classes" and report["request"]["forget_count"] > 0
    for step in ("split", "pretrain", "oracle", "unlearn", "evaluate", "promote", "cleanup"):
        assert report["timing_s"][step] > 0
    assert report["mlflow"]["model_version"] == "1"
    # the terminal ends with a results summary: the request, the three models, the gates, the version
    summary = r.stderr[r.stderr.index("result: mae / encoder_noise on fashion-mnist: forgot ") :]
    assert [ln.split()[0] for ln in summary.splitlines()[2:5]] == ["original", "unlearned", "oracle"]
    assert "gates:\n  forget_vs_oracle: " in summary and "registered: models:/lethe-mae/1, " in summary
    assert f"certificate: {work / 'certificate' / 'certificate.json'}" in summary
    # held-out pictures for both splits, embedded in the HTML report
    assert (work / "report" / "grid_retain_box.png").is_file() and (
        work / "report" / "grid_forget_box.png"
    ).is_file()
    # centre box and outpainting border, for both splits
    assert (work / "report" / "report.html").read_text().count("data:image/png;base64") == 4
    assert set(report["metrics_by_mask"]["outpaint"]["unlearned"]["retain"]) >= {"psnr", "ssim", "fd"}
    assert report["sampler"]["name"] == "single_pass"
    # best-checkpoint keeping: the run scored steps 3, 5 and 6 (smoke: checkpoints every 3, scores
    # every 5, the last step) on validation images and handed on the lowest, which the model file names
    kept = report["unlearn"]["checkpoint"]
    assert kept["kept"] == "best" and [h["step"] for h in kept["history"]] == [3, 5, 6], kept
    assert kept["step"] == min(kept["history"], key=lambda h: h["objective"])["step"]
    assert load_checkpoint(work / "models" / "unlearned.pt")[1]["step"] == kept["step"]
    assert f"checkpoint: kept step {kept['step']} of 6, the best validation objective" in summary
    assert "<h2>Unlearning checkpoint</h2>" in (work / "report" / "report.html").read_text()
    # cleanup: the forget shard is gone, and the report says so
    assert not (work / "shards" / "forget").exists()
    assert all(d["absent_after"] for d in report["cleanup"]["deleted"])
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["status"] == "complete" and cert["pipeline"]["orchestrator"] == "lethe run"
    assert cert["cleanup"]["all_absent"] and cert["result_model"]["version"] == "1"
    # ... and so is the feature net trained on it: work dir, model cache (it trains in a Ray task, which
    # leaves no Ray Train checkpoints; cleanup looks for them all the same)
    featnet_key = json.loads((work / "state.json").read_text())["pretrain"]["featnet"]["cache_key"]
    cache = tmp_path / "cache"
    gone = [
        work / "models" / "featnet.pt",
        cache / "models" / f"featnet-{featnet_key}.pt",
        cache / "models" / f"featnet-{featnet_key}.json",
        work / "ray" / f"featnet-{featnet_key}",
    ]
    assert not [p for p in gone if p.exists()]
    assert list((cache / "models").glob("mae-*.pt"))  # the original and the oracle stay cached
    listed = {(d["model"], d["copy"]): d for d in cert["cleanup"]["deleted"] if "model" in d}
    for copy in ("work dir", "model cache", "ray checkpoints"):
        assert listed[("featnet", copy)]["existed"] is (copy != "ray checkpoints"), copy
        assert listed[("featnet", copy)]["absent_after"] and listed[("featnet", copy)]["absent_at_issue"]
    assert {Path(d["uri"]) for d in listed.values()} >= set(gone)

    db = work / "mlflow.db"
    assert runs_by_status(db) == {"FINISHED": 8}  # the pipeline run and its seven steps
    with sqlite3.connect(db) as con:
        names = {n for (n,) in con.execute("select name from datasets")}
        digests = {d for (d,) in con.execute("select digest from datasets")}
        tags = dict(con.execute("select key, value from model_version_tags"))
    assert names == {"forget", "retain", "heldout_forget", "heldout_retain"}
    assert report["request"]["forget_digest"][:32] in digests
    assert (
        tags["lethe.method"] == "encoder_noise"
        and tags["lethe.forget_digest"] == report["request"]["forget_digest"]
    )

    # a killed copy left the cached original truncated: the second run says so and rebuilds it (from
    # its finished Ray Train run: the same weights), then reuses the oracle instead of retraining
    from lethe.pipeline.model_cache import corruption, index_path

    original_key = json.loads((work / "state.json").read_text())["pretrain"]["original"]["cache_key"]
    cached_original = cache / "models" / f"mae-{original_key}.pt"
    whole = cached_original.read_bytes()
    cached_original.write_bytes(whole[: len(whole) // 3])
    r2 = lethe(
        "run", "--preset", "smoke", "--workdir", str(work), "--forget-classes", "Trouser", cwd=tmp_path
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert (
        f"cached original model is corrupt (size {len(whole) // 3} bytes, index says {len(whole)}); rebuilding"
        in r2.stderr
    )
    assert cached_original.read_bytes() == whole and corruption(cached_original) is None
    assert json.loads(index_path(cached_original).read_text())["file"]["size"] == len(whole)
    assert "reusing cached model" in r2.stderr
    # same request, recipe and original: the finished unlearning run is returned, not trained again,
    # and its (identical) weights are not registered a second time
    assert any(
        "run unlearn-" in ln and "finished before: returning its result" in ln
        for ln in r2.stderr.splitlines()
    )
    assert "already holds this model" in r2.stderr
    assert registered_versions(db) == 1
    # the re-run's report points at the version, and the certificate, that the first run registered
    again = json.loads(report_path.read_text())
    assert again["mlflow"]["model_version"] == "1"
    assert again["certificate_uri"] == report["certificate_uri"]

    # each step also runs alone: re-split (cleanup removed the forget shard), then evaluate by itself,
    # which first needs the feature net cleanup deleted: one line says so, `lethe pretrain` retrains it
    flags = ("--preset", "smoke", "--workdir", str(work), "--forget-classes", "Trouser")
    assert lethe("split", *flags, cwd=tmp_path).returncode == 0
    no_featnet = lethe("evaluate", *flags, cwd=tmp_path)
    assert no_featnet.returncode == 2, no_featnet.stderr[-2000:]
    lines = [ln for ln in no_featnet.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(lines) == 1 and "feature net is missing" in lines[0] and "lethe pretrain" in lines[0]
    assert "Traceback" not in no_featnet.stderr
    assert lethe("pretrain", *flags, cwd=tmp_path).returncode == 0
    assert (work / "models" / "featnet.pt").is_file()
    r3 = lethe("evaluate", *flags, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    alone = json.loads(report_path.read_text())
    validate_report(alone)
    assert alone["run_id"] not in (report["run_id"], "") and alone["run_id"] == alone["mlflow"]["run_id"]


@pytest.mark.slow
# diffusion's own run is `extended`: its model, sampler and unlearning have unit tests (test_families,
# test_methods); the generator pipeline runs end to end with vqgan here.
@pytest.mark.parametrize(
    ("family", "sampler"),
    [("vqgan", "maskgit"), pytest.param("diffusion", "ddim", marks=pytest.mark.extended)],
)
def test_smoke_run_of_each_generative_family(
    tmp_path: Path, family: str, sampler: str, pytestconfig: pytest.Config
) -> None:
    """The whole pipeline per family on the 8x8 digits (the smallest real data set)."""
    import torch

    work = tmp_path / "work"
    r = lethe(
        "run",
        "--preset",
        "smoke",
        "--family",
        family,
        "--dataset",
        "digits",
        "--forget-classes",
        "3",
        "--workdir",
        str(work),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["family"] == family and report["mlflow"]["model_version"] == "1"
    assert report["sampler"]["name"] == sampler and report["sampler"]["steps"] >= 1
    assert set(report["metrics_by_mask"]["outpaint"]) == {"original", "unlearned", "oracle"}
    for kind in ("box", "outpaint"):
        assert (work / "report" / f"grid_retain_{kind}.png").is_file()
    for name in ("original", "oracle", "unlearned"):
        assert torch.load(work / "models" / f"{name}.pt", weights_only=True)["kind"] == family
    # the pretrain step records the phases it ran (VQ-GAN: tokenizer, then transformer)
    phases = json.loads((work / "state.json").read_text())["pretrain"]["original"]["phases"].split(",")
    assert phases == (["tokenizer", "transformer"] if family == "vqgan" else ["main"])
    assert runs_by_status(work / "mlflow.db") == {"FINISHED": 8}
    if pytestconfig.getoption("--extended"):
        # by default the registry-source path runs with hf-vitmae (test_source) and vae (test_feature_pipeline)
        assert_registered_source_unlearns(tmp_path, report, "--dataset", "digits", "--forget-classes", "3")


def assert_registered_source_unlearns(tmp_path: Path, first: dict, *request: str) -> None:
    """The version a first run registered is the source of the next request (`--source-model`):
    it is loaded as the original, weights unchanged, and the result is the next version of the same
    registered model, in the same family. Same request and cache, so the oracle is reused."""
    import torch

    from lethe.tracking.model_format import load_lethe_model

    family, name, uri = first["family"], first["mlflow"]["model_name"], first["mlflow"]["tracking_uri"]
    work = tmp_path / "from-registry"
    r = lethe(
        "run", "--preset", "smoke", "--family", family, *request, "--method", first["method"],
        "--source-model", f"models:/{name}/1", "--tracking-uri", uri, "--workdir", str(work), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["family"] == family and report["source_model"] == f"models:/{name}/1"
    assert (report["mlflow"]["model_name"], report["mlflow"]["model_version"]) == (name, "2")
    registered = load_lethe_model(f"models:/{name}/1", uri).state_dict()
    original = torch.load(work / "models" / "original.pt", weights_only=True)
    assert original["kind"] == family and original["meta"]["source_model"] == f"models:/{name}/1"
    assert all(torch.equal(original["state_dict"][k], v) for k, v in registered.items())
    assert load_lethe_model(f"models:/{name}/2", uri).family == family


@pytest.mark.slow
@pytest.mark.extended  # the method's phases and resume run in test_ray_train; its units in test_decouple
def test_decouple_retain_through_lethe_run(tmp_path: Path) -> None:
    """`--method decouple_retain`: lambda calibrated in the unlearn step, recorded with its rule in
    report.json and MLflow; decoupling ended (at lambda or the smoke cap of 10 ascent steps) and the
    retention stage ran its steps; the report has the distance to the oracle for every model."""
    work = tmp_path / "work"
    flags = ("--preset", "smoke", "--dataset", "digits", "--forget-classes", "3", "--workdir", str(work))
    r = lethe("run", *flags, "--method", "decouple_retain", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    validate_report(report)
    assert report["method"] == "decouple_retain"
    dec = report["decouple"]
    assert dec["lambda"] > 0 and "held-out retain images" in dec["lambda_rule"]
    assert 0 <= dec["ascent_steps"] <= 10 and dec["retain_steps"] >= 1
    assert dec["lambda_reached"] == (dec["final_distance"] >= dec["lambda"])
    dist = report["distance_to_oracle"]
    assert set(dist) == {"original", "unlearned", "oracle"} and dist["oracle"]["psnr_abs"] == 0.0
    # digits holds ~27 held-out 3s: fewer than FD needs (2 x the 32-d smoke features), so no fd_rel
    assert report["metrics"]["oracle"]["forget"]["fd"] is None and "fd_rel" not in dist["oracle"]
    assert "Decoupling + knowledge retention" in (work / "report" / "report.html").read_text()
    with sqlite3.connect(work / "mlflow.db") as con:
        params = dict(con.execute("select key, value from params"))
    assert float(params["decouple.lambda"]) == pytest.approx(dec["lambda"], rel=1e-6)
    assert params["unlearn.decouple.max_ascent_steps"] == "10"


@pytest.mark.slow
def test_one_id_request_finishes_and_keeps_the_id_out_of_mlflow_logs_and_reports(tmp_path: Path) -> None:
    """The typical data subject's request: one image. (Several ids go the same way: the split is the
    same code, and the evidence rules for any size are unit-tested in tests/unit/test_evidence.py.)"""
    forget_ids = ["digits-0029"]
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("# deletion requests\n" + "\n".join(forget_ids) + "\n")
    work = tmp_path / "work"
    r = lethe(
        "run",
        "--preset",
        "smoke",
        "--dataset",
        "digits",
        "--forget-ids",
        str(ids_file),
        "--workdir",
        str(work),
        "--method",
        "auto",  # the default of the demo preset: an id request has nothing to search on
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert report["request"]["kind"] == "ids" and report["request"]["forget_count"] == len(forget_ids)
    # method auto without a search: the first of tune.methods at the configured settings, and why
    auto = report["unlearn"]["auto"]
    assert report["method"] == auto["chosen"] == "encoder_noise" and auto["searched"] is False
    assert "an id request has no held-out images to choose on" in auto["why"]
    assert report["unlearn"]["tuned"] is False and "tune" not in report
    assert "method auto: no search: an id request" in r.stdout + r.stderr
    assert not (work / "tune" / "best.json").exists()
    cert = json.loads((work / "certificate" / "certificate.json").read_text())
    assert cert["method"]["name"] == "encoder_noise" and cert["method"]["selection"]["why"] == auto["why"]
    # nothing held out to choose a checkpoint on apart from the graded images: the last is kept
    assert report["unlearn"]["checkpoint"]["kept"] == "last", report["unlearn"]
    assert "checkpoint: the last step (an id request has no held-out forget images" in r.stderr
    assert set(report["metrics"]["unlearned"]["forget"]) >= {"psnr", "ssim", "fd", "embed_cos", "mia_auc"}
    # Too few images for a Frechet distance (smoke feature net: 32-d, at least 64 images): per-image
    # measures with intervals instead, and no membership verdict from fewer images than the test needs.
    forget = report["metrics"]["unlearned"]["forget"]
    assert forget["fd"] is None and forget["psnr_ci95"][0] <= forget["psnr"] <= forget["psnr_ci95"][1]
    assert "oracle_dist" in forget and report["metrics"]["oracle"]["forget"]["oracle_dist"] == 0.0
    membership = report["evidence"]["membership"]
    assert membership["n_members"] == len(forget_ids)
    assert registered_versions(work / "mlflow.db") == 1
    gates = _gates(report)
    assert "PSNR" in gates["forget_vs_oracle"]["limit"]
    assert membership["verdict"] == "inconclusive" and "too few" in membership["reason"]
    assert gates["mia"]["verdict"] == "inconclusive"
    # no picture of the requested images
    assert not (work / "report" / "grid_forget_box.png").exists()
    assert not (work / "report" / "grid_forget_outpaint.png").exists()
    assert (work / "report" / "report.html").read_text().count("data:image/png;base64") == 2
    written = all_text_under(work) + r.stdout.encode() + r.stderr.encode()
    leaked = [i for i in forget_ids if i.encode() in written]
    assert not leaked, f"{len(leaked)} forget ids leaked into MLflow / reports / logs"


def _gates(report: dict) -> dict[str, dict]:
    return {g["name"]: g for g in report["promotion"]["gates"]["results"]}


# ----------------------------------------------------------------------------------------------
# bad input: one line, non-zero exit, nothing half-written
# ----------------------------------------------------------------------------------------------
def _assert_clean_failure(r: subprocess.CompletedProcess[str], work: Path, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(line) == 1, r.stderr[-2000:]
    for needle in needles:
        assert needle in line[0], line[0]
    assert "Traceback" not in r.stderr.split("lethe: error:")[-1]
    assert "starting a local Ray" not in r.stderr  # refused before any Ray work
    assert not (work / "shards").exists()
    assert not list(work.parent.glob(".shards*")) and not list(work.glob(".shards*"))
    statuses = runs_by_status(work / "mlflow.db")
    assert "FINISHED" not in statuses, statuses
    assert registered_versions(work / "mlflow.db") == 0


def _png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128).save(path)


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        for i in range(6):
            _png(root / cls / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--dataset", "digits", "--forget-classes", "Unicorn"], ["unknown class name", "Unicorn"]),
        (["--dataset", "/nonexistent/data"], ["data set folder not found", "/nonexistent/data"]),
        (
            ["--dataset", "digits", "--forget-classes", ",".join(str(i) for i in range(10))],
            ["forget request covers all training data"],
        ),
    ],
    ids=["unknown-class", "missing-folder", "forget-all"],
)
def test_bad_requests(tmp_path: Path, args: list[str], needles: list[str]) -> None:
    work = tmp_path / "work"
    r = split_cmd(work, *args)
    _assert_clean_failure(r, work, *needles)


def test_empty_forget_set_and_unknown_ids(tmp_path: Path) -> None:
    work = tmp_path / "work"
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing requested\n")
    r = split_cmd(work, "--dataset", "digits", "--forget-ids", str(empty))
    _assert_clean_failure(r, work, "empty forget set")

    unknown = tmp_path / "unknown.txt"
    unknown.write_text("digits-0001\nsecret-person-42\n")
    r = split_cmd(work, "--dataset", "digits", "--forget-ids", str(unknown))
    _assert_clean_failure(r, work, "ids not in the data set", "1 unknown")
    assert "secret-person-42" not in r.stderr + r.stdout


@pytest.mark.slow
def test_corrupt_and_mixed_images(tmp_path: Path, image_folder: Path) -> None:
    work = tmp_path / "work"
    bad = image_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    r = split_cmd(work, "--dataset", str(image_folder), "--forget-classes", "cat")
    _assert_clean_failure(r, work, "cannot decode image", "broken.png")

    bad.unlink()
    _png(image_folder / "dog" / "big.png", size=(10, 10))
    r = split_cmd(work, "--dataset", str(image_folder), "--forget-classes", "cat")
    _assert_clean_failure(r, work, "mixed sizes")


def test_unwritable_work_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # A directory under a regular file cannot be created, even by root.
    r = split_cmd(blocker / "work", "--dataset", "digits")
    assert r.returncode == 2
    assert "work dir is not writable" in r.stderr and str(blocker) in r.stderr


@pytest.mark.slow
def test_checkpoint_of_another_architecture(tmp_path: Path) -> None:
    import torch

    from lethe.models import FeatNet, FeatNetArch, save_checkpoint

    work = tmp_path / "work"
    r = split_cmd(work, "--dataset", "digits", "--forget-classes", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    torch.manual_seed(0)
    save_checkpoint(work / "models" / "original.pt", FeatNet(FeatNetArch(8, 8, 1, 10, 4, 8)))
    r = lethe(
        "unlearn",
        "--preset",
        "smoke",
        "--workdir",
        str(work),
        "--dataset",
        "digits",
        "--forget-classes",
        "3",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    line = [ln for ln in r.stderr.splitlines() if ln.startswith("lethe: error:")]
    assert len(line) == 1 and "another architecture" in line[0] and "expected mae" in line[0]
    assert not (work / "models" / "unlearned.pt").exists()
    assert registered_versions(work / "mlflow.db") == 0


def test_bad_flag_value_names_the_field(tmp_path: Path) -> None:
    r = split_cmd(tmp_path / "w", "--alpha", "-3")
    assert r.returncode == 2 and "unlearn.alpha" in r.stderr
