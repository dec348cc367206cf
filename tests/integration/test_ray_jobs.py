"""Ray jobs against one real local head (`ray start --head` on 127.0.0.1, its own temp dir and ports):
the README's `ray job submit` commands for split, pretrain and unlearn, and a KFP component's Ray
step submitted through the Jobs API instead of starting Ray itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lethe.config import build_config, config_from_json
from lethe.orchestration import kfp_steps
from lethe.orchestration.ray_submit import RemoteStepError, is_jobs_address, job_entrypoint
from lethe.testing.ray_head import head_env, local_ray_head

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    # Component steps run `python -m lethe...` inside jobs without a working dir: this checkout.
    with local_ray_head(pythonpath=str(REPO)) as url:
        yield url


def _submit_cli(
    address: str, script: str, *args: str, timeout: int = 900
) -> subprocess.CompletedProcess[str]:
    """Exactly the README's command: ray job submit --address ... --working-dir . -- python ray_jobs/..."""
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", ".", "--", "python", script, *args]
    return subprocess.run(cmd, cwd=REPO, env=head_env(), capture_output=True, text=True, timeout=timeout)


class _Artifact:
    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.metadata: dict = {}


def test_job_entrypoint_round_trips_the_config(tmp_path: Path) -> None:
    cfg = build_config(
        "smoke", overrides={"workdir": str(tmp_path / "w"), "resources": {"ray_address": "http://h:8265"}}
    )
    assert is_jobs_address(cfg.resources.ray_address) and not is_jobs_address("ray://h:10001")
    argv = shlex.split(job_entrypoint(cfg, "unlearn", "run123"))
    assert argv[:4] == ["python", "-m", "lethe.orchestration.ray_submit", "unlearn"]
    job_cfg = config_from_json(argv[argv.index("--config-json") + 1])
    assert job_cfg.resources.ray_address is None  # inside the job, Ray comes from the job runtime
    assert job_cfg.model_copy(update={"resources": cfg.resources}) == cfg
    assert argv[argv.index("--parent-run-id") + 1] == "run123"


@pytest.mark.slow
def test_submit_split_pretrain_unlearn_jobs(ray_head: str, tmp_path: Path) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    work = tmp_path / "work"
    common = ["--preset", "smoke", "--dataset", "digits", "--forget-classes", "3", "--workdir", str(work)]
    client = JobSubmissionClient(ray_head)
    job_id = client.submit_job(
        entrypoint="python ray_jobs/split.py " + " ".join(common), runtime_env={"working_dir": str(REPO)}
    )
    deadline = time.monotonic() + 600
    while (status := client.get_job_status(job_id)) not in {
        JobStatus.SUCCEEDED,
        JobStatus.FAILED,
        JobStatus.STOPPED,
    }:
        assert time.monotonic() < deadline, "split job did not finish"
        time.sleep(2)
    assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    assert manifest["shards"]["forget"]["count"] > 0 and manifest["dataset"] == "digits"
    # The job ran on our head: its driver joined the cluster instead of starting a Ray of its own.
    assert "Started a local Ray instance" not in client.get_job_logs(job_id)

    r = _submit_cli(ray_head, "ray_jobs/pretrain.py", *common)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    r = _submit_cli(ray_head, "ray_jobs/unlearn.py", *common)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    assert (work / "models" / "unlearned.pt").is_file()
    ours = [j for j in client.list_jobs() if not (j.submission_id or "").startswith("lethe-")]
    assert len(ours) == 3 and all(j.status == JobStatus.SUCCEEDED for j in ours)


@pytest.mark.slow
def test_split_component_submits_a_ray_job(ray_head: str, tmp_path: Path) -> None:
    from ray.job_submission import JobSubmissionClient

    work = tmp_path / "work"
    cfg = build_config(
        "smoke",
        overrides={
            "workdir": str(work),
            "data": {"dataset": "digits"},
            "request": {"classes": ["3"]},
            "resources": {"ray_address": ray_head},
        },
    )
    shards = _Artifact(tmp_path / "out" / "shards")
    out = kfp_steps.split(cfg.model_dump_json(), str(work), "", shards)
    assert (work / "shards" / "manifest.json").is_file() and (work / "shards" / "forget").is_dir()
    assert shards.metadata["data_digest"] == out["data_digest"] and shards.metadata["forget_count"] > 0
    jobs = [
        j
        for j in JobSubmissionClient(ray_head).list_jobs()
        if (j.submission_id or "").startswith("lethe-split-")
    ]
    assert [str(j.status).split(".")[-1] for j in jobs] == ["SUCCEEDED"]

    # a failing step: the job's one-line error comes back as the component's error
    bad = cfg.model_copy(update={"request": cfg.request.model_copy(update={"classes": ["Unicorn"]})})
    with pytest.raises(RemoteStepError, match="unknown class name"):
        kfp_steps.split(bad.model_dump_json(), str(tmp_path / "work2"), "", _Artifact(tmp_path / "o2"))
