"""Run one lethe step as a Ray job on a remote cluster (Ray Jobs API), and the job's entry point.

A KFP component whose config has `resources.ray_address` set to the cluster's dashboard address
(`http://HOST:8265`) submits its step with `JobSubmissionClient` and waits for it; any other address
(`ray://...`, `HOST:6379`, `auto`) is joined in-process by `ray.init`, and no address starts a local
Ray. The job runs `python -m lethe.orchestration.ray_submit STEP ...` on the cluster, which needs the
same image as the components (infra/Dockerfile) and the work dir on a shared volume (the shards and
checkpoints are files there).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
import uuid
from collections.abc import Sequence

from lethe.config import RunConfig, config_from_json
from lethe.errors import LetheError, find_lethe_error

log = logging.getLogger("lethe.ray_submit")

# Steps that do their work on Ray (Ray Data / Ray Train); the others run where they are called.
RAY_STEPS = ("split", "pretrain", "oracle", "unlearn")
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_AGENT_WAIT_S = 120.0


class RemoteStepError(LetheError):
    """A step submitted as a Ray job did not succeed."""


def is_jobs_address(address: str | None) -> bool:
    return bool(address) and str(address).startswith(("http://", "https://"))


def job_entrypoint(cfg: RunConfig, step: str, parent_run_id: str | None) -> str:
    # The job's own Ray address comes from the job runtime (RAY_ADDRESS); the dashboard URL is ours.
    job_cfg = cfg.model_copy(deep=True)
    job_cfg.resources.ray_address = None
    args = [
        "python",
        "-m",
        "lethe.orchestration.ray_submit",
        step,
        "--config-json",
        job_cfg.model_dump_json(),
        "--workdir",
        str(cfg.workdir_path),
    ]
    if parent_run_id:
        args += ["--parent-run-id", parent_run_id]
    return shlex.join(args)


def submit_step(
    cfg: RunConfig, step: str, parent_run_id: str | None, poll_s: float = 2.0, timeout_s: float | None = None
) -> str:
    """Submit `step` to the Ray cluster at cfg.resources.ray_address and wait; returns the job id."""
    from ray.job_submission import JobSubmissionClient

    from lethe.pipeline.workdir_lock import child_env

    address = str(cfg.resources.ray_address)
    try:
        client = JobSubmissionClient(address)
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        raise RemoteStepError(
            "cannot reach the Ray cluster's job API",
            where=address,
            expected="the Ray dashboard address, http://HOST:8265",
            seen=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
        ) from None
    submission_id = f"lethe-{step}-{uuid.uuid4().hex[:8]}"
    lock_env = child_env()
    deadline = time.monotonic() + _AGENT_WAIT_S
    while True:
        try:
            job_id = client.submit_job(
                entrypoint=job_entrypoint(cfg, step, parent_run_id),
                submission_id=submission_id,
                metadata={"lethe.step": step, "lethe.workdir": str(cfg.workdir_path)},
                # The job runs under our work-dir lock when we run under one (a local pipeline run).
                runtime_env={"env_vars": lock_env} if lock_env else None,
            )
            break
        except RuntimeError as exc:
            # A head that just started (or a restarted agent) answers 500 until its job agent is
            # up; anything else, or a wait past the deadline, is a real refusal.
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise RemoteStepError(
                    "the Ray cluster refused the job", where=address, seen=str(exc).splitlines()[0][:200]
                ) from None
            time.sleep(2)
    log.warning("%s: submitted Ray job %s to %s", step, job_id, address)
    start = time.monotonic()
    status = "PENDING"
    while True:
        status = str(client.get_job_status(job_id))
        status = status.split(".")[-1].upper()  # JobStatus enum or its str
        if status in _TERMINAL:
            break
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            client.stop_job(job_id)
            raise RemoteStepError(f"Ray job for step {step} timed out", where=address, seen=job_id)
        time.sleep(poll_s)
    logs = client.get_job_logs(job_id) or ""
    # The job's output belongs in this step's log (KFP shows it per task).
    sys.stderr.write(logs[-20000:])
    if status != "SUCCEEDED":
        ours = [ln for ln in logs.splitlines() if ln.startswith("lethe: error:")]
        if ours:
            raise RemoteStepError(ours[-1].removeprefix("lethe: error:").strip(), where=f"Ray job {job_id}")
        raise RemoteStepError(f"Ray job for step {step} ended {status}", where=address, seen=job_id)
    return job_id


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point inside the Ray job: run one step against the work dir, attached to the pipeline run."""
    from lethe.pipeline import run_step

    p = argparse.ArgumentParser(prog="python -m lethe.orchestration.ray_submit")
    p.add_argument("step", choices=RAY_STEPS)
    p.add_argument("--config-json", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--parent-run-id")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("lethe").setLevel(logging.INFO)
    try:
        cfg = config_from_json(a.config_json)
        cfg.workdir = a.workdir
        run_step(cfg, a.step, a.parent_run_id, standalone=False)
        return 0
    except Exception as e:  # noqa: BLE001
        ours = find_lethe_error(e)
        if ours is None:
            raise
        print(f"lethe: error: {ours.line()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
