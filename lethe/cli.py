"""`lethe` command line: `lethe run` runs the whole pipeline, `lethe <step>` one step (DESIGN.md 7),
`lethe pipeline compile | run --local | submit | schedule` the Kubeflow pipeline.

Flags are a thin layer over `RunConfig`: preset < --config YAML < flags. A LetheError becomes one
line on stderr and exit code 2; nothing else is printed to stdout after the report path.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

from lethe.catalogue import AUTO, FAMILIES, METHODS, PLUGIN_GROUP
from lethe.config import PRESETS, RunConfig, build_config
from lethe.errors import LetheError, find_lethe_error

STEP_HELP = {
    "split": "split the data set into forget / retain / held-out shards (Ray Data)",
    "pretrain": "train the original model and the feature net (Ray Train; cached)",
    "oracle": "retrain from scratch on retain only (Ray Train; cached)",
    "unlearn": "unlearn the forget set from the original model (Ray Train)",
    "tune": "search alpha and lr with Ray Tune (ASHA; each trial a Ray Train run); writes tune/best.json",
    "evaluate": "compare original / unlearned / oracle on held-out data; write the report",
    "promote": "register the unlearned model in the MLflow registry; move the alias if the gates pass",
    "cleanup": "delete the forget shards and record the deletion",
}


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run configuration")
    g.add_argument("--config", help="YAML file with RunConfig fields")
    g.add_argument("--preset", choices=PRESETS, help="smoke: tiny, what tests use; demo: the default")
    g.add_argument(
        "--dataset",
        help="fashion-mnist | digits | avataaars[:N] | path to an IDX dir, image folder or Parquet data set",
    )
    what = g.add_mutually_exclusive_group()
    what.add_argument("--forget-classes", help="comma-separated class names to forget")
    what.add_argument(
        "--forget-ids",
        metavar="FILE",
        help="file with one id to forget per line; lines starting with '#' are comments, any other '#' is part of the id",
    )
    what.add_argument(
        "--forget-feature",
        metavar="NAME",
        help="a visual feature the generator must stop producing (gan/vae): 'glasses' on avataaars, or a class name",
    )
    g.add_argument(
        "--family",
        metavar="FAMILY",
        help=f"{', '.join(FAMILIES)}, or a plug-in family: package.module:Class or an entry point of "
        f"group {PLUGIN_GROUP}",
    )
    g.add_argument("--method", choices=(*METHODS, AUTO), help="auto: Ray Tune chooses it per request")
    g.add_argument("--alpha", type=float, help="forget-loss weight")
    g.add_argument(
        "--proxy-retain",
        metavar="DATASET",
        help="images of this data set stand in for the retain side of the unlearning loss "
        "(when the training data is no longer kept); the oracle and metrics use the real data",
    )
    g.add_argument("--workdir", help="where shards, models, reports and the MLflow store go")
    g.add_argument("--cache-dir", help="model cache shared between runs (default: <workdir>/../cache)")
    g.add_argument(
        "--cache-on-corrupt",
        choices=("rebuild", "refuse"),
        help="a cached model that fails its check: rebuild it (default) or stop with the command that clears it",
    )
    g.add_argument(
        "--oracle",
        choices=("reuse", "retrain", "sample", "none"),
        help="the oracle: reuse the one cached for the same retain set (default), retrain it, sample: "
        "only on a keyed random share of runs (--oracle-audit-share), the others judged without it, "
        "or none: the training data is gone, so no oracle can be trained (with --proxy-retain)",
    )
    g.add_argument(
        "--oracle-audit-share",
        type=float,
        metavar="SHARE",
        help="--oracle sample: share of runs audited (0.25)",
    )
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the work dir)")
    g.add_argument("--num-workers", type=int, help="Ray Train workers")
    g.add_argument("--use-gpu", action="store_true", default=None, help="Ray Train workers on GPUs")
    g.add_argument("--ray-address", help="Ray cluster address (default: start a local Ray)")
    g.add_argument(
        "--storage",
        metavar="URI",
        help="s3://bucket/prefix (or a folder) for shards, models, checkpoints, reports (default: the work dir)",
    )
    g.add_argument(
        "--tune", action="store_true", default=None, help="tune alpha/lr first (run) or use tune/best.json"
    )
    g.add_argument("--seed", type=int)
    g.add_argument(
        "--source-model",
        metavar="URI",
        help="unlearn this registered model (models:/NAME/VERSION or models:/NAME@ALIAS) instead of "
        "pretraining; hf-vitmae also takes a save_pretrained folder (a path or s3://bucket/prefix)",
    )
    g.add_argument(
        "--alias", help="registry alias moved to the new version when the gates pass (default champion)"
    )
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


PIPELINE_HELP = {
    "compile": "write the pipeline's IR YAML (this run configuration as the parameters' defaults)",
    "run": "run the pipeline with kfp's local runner (--local) and print the path of report.json",
    "submit": "start one run of the pipeline on a Kubeflow Pipelines server",
    "schedule": "create a recurring run of the pipeline on a Kubeflow Pipelines server",
}


def _pipeline_parsers(pipe: argparse.ArgumentParser) -> None:
    sub = pipe.add_subparsers(dest="action", required=True, metavar="{compile,run,submit,schedule}")
    for action, text in PIPELINE_HELP.items():
        p = sub.add_parser(action, help=text, description=text)
        _common(p)
        g = p.add_argument_group("pipeline")
        g.add_argument("--retries", type=int, help="retries per task (default 2 on a cluster, 0 locally)")
        g.add_argument(
            "--model",
            metavar="NAME",
            help="the nightly pipeline of a registered model: apply its queued deletion requests to its champion",
        )
        g.add_argument(
            "--requests-db", metavar="URL", help="the request store (default: <workdir>/requests.db)"
        )
        if action == "compile":
            g.add_argument("--output", required=True, metavar="FILE", help="pipeline YAML to write")
        if action == "run":
            g.add_argument("--local", action="store_true", help="use kfp's local runner (required)")
            g.add_argument("--no-cache", action="store_true", help="run every task, ignoring KFP's cache")
        if action != "run":
            g.add_argument(
                "--pvc", metavar="CLAIM", help="PersistentVolumeClaim mounted in every task (the work dir)"
            )
            g.add_argument(
                "--pvc-mount", metavar="PATH", help="where to mount it (default: the work dir's parent)"
            )
        if action in ("submit", "schedule"):
            g.add_argument("--host", required=True, metavar="URL", help="Kubeflow Pipelines API endpoint")
            g.add_argument("--namespace", help="Kubeflow profile namespace (multi-user deployments)")
            g.add_argument("--experiment", default="lethe", help="KFP experiment (created if missing)")
        if action == "submit":
            g.add_argument("--run-name", help="display name of the run")
        if action == "schedule":
            g.add_argument(
                "--cron", required=True, metavar="EXPR", help="'SEC MIN HOUR DOM MON DOW' or 5-field cron"
            )
            g.add_argument("--job-name", help="display name of the recurring run")
            g.add_argument(
                "--pipeline-name", help="KFP pipeline to add the version to (default lethe-unlearning)"
            )
            g.add_argument("--max-concurrency", type=int, default=1, help="runs at the same time (default 1)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lethe", description="Make image generative models forget data, and prove it."
    )
    sub = p.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("run", help="run the whole pipeline and print the path of report.json"))
    for name, text in STEP_HELP.items():
        _common(sub.add_parser(name, help=text))
    pipe = sub.add_parser(
        "pipeline", help="Kubeflow pipeline commands: compile, run --local, submit, schedule"
    )
    _pipeline_parsers(pipe)
    night = sub.add_parser(
        "nightly",
        help="apply every queued deletion request of a model to its champion; prints report.json's path",
    )
    _common(night)
    g = night.add_argument_group("requests")
    g.add_argument("--model", help="registered model whose queued requests to apply (default: the run's)")
    g.add_argument("--requests-db", metavar="URL", help="the request store (default: <workdir>/requests.db)")
    from lethe.store.cli import add_parsers, store_flags

    add_parsers(sub)
    cert = sub.add_parser("certificate", help="unlearning certificates: verify a signed chain")
    verify = cert.add_subparsers(dest="action", required=True, metavar="{verify}").add_parser(
        "verify",
        help="check a certificate's signature and walk its chain back to the model's first version",
    )
    store_flags(verify)
    verify.add_argument(
        "target", metavar="FILE|models:/NAME/VERSION", help="a certificate.json or a model version"
    )
    verify.add_argument(
        "--key-id",
        action="append",
        metavar="ID",
        help="trust signatures by this key id (repeatable; default: this deployment's signing key)",
    )
    return p


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    # Commands take different subsets of the flags (`lethe requests` only the store's): absent = unset.
    a = argparse.Namespace(**{**dict.fromkeys(_FLAG_DESTS), **vars(args)})
    o: dict[str, Any] = {}

    def put(path: str, value: Any) -> None:
        if value is None:
            return
        *parents, leaf = path.split(".")
        d = o
        for k in parents:
            d = d.setdefault(k, {})
        d[leaf] = value

    put("data.dataset", a.dataset)
    if a.forget_classes is not None:
        put("request.kind", "classes")
        put("request.classes", [c.strip() for c in a.forget_classes.split(",") if c.strip()])
    if a.forget_ids is not None:
        put("request.kind", "ids")
        put("request.ids_file", a.forget_ids)
    if a.forget_feature is not None:
        put("request.kind", "feature")
        put("request.feature", a.forget_feature.strip())
    put("family", a.family)
    put("method", a.method)
    put("unlearn.alpha", a.alpha)
    put("unlearn.proxy_retain", getattr(a, "proxy_retain", None))
    put("workdir", a.workdir)
    put("cache_dir", a.cache_dir)
    put("cache.on_corrupt", a.cache_on_corrupt)
    put("cache.oracle", a.oracle)
    put("cache.oracle_audit_share", a.oracle_audit_share)
    put("tracking.tracking_uri", a.tracking_uri)
    put("resources.num_workers", a.num_workers)
    put("resources.use_gpu", a.use_gpu)
    put("resources.ray_address", a.ray_address)
    put("storage.uri", a.storage)
    put("tune.enabled", a.tune)
    put("seed", a.seed)
    put("source_model", a.source_model)
    put("tracking.alias", a.alias)
    put("requests.db_url", a.requests_db)
    return o


_FLAG_DESTS = (
    "dataset forget_classes forget_ids forget_feature family method alpha workdir cache_dir "
    "cache_on_corrupt oracle oracle_audit_share tracking_uri num_workers use_gpu ray_address storage tune seed source_model alias "
    "requests_db"
).split()


def config_from_args(a: argparse.Namespace) -> RunConfig:
    return build_config(a.preset, a.config, overrides_from_args(a))


def _setup_logging(verbose: bool) -> None:
    # Step progress goes to stderr so stdout's last line stays the report path.
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("lethe").setLevel(logging.DEBUG if verbose else logging.INFO)


def _pipeline(args: argparse.Namespace, cfg: RunConfig) -> int:
    from lethe.orchestration import kfp_client

    if args.action == "run":
        if not args.local:
            raise LetheError(
                "`lethe pipeline run` needs --local (kfp's local runner)",
                expected="--local, or `lethe pipeline submit --host URL` for a Kubeflow Pipelines server",
            )
        res = kfp_client.run_local(
            cfg,
            tune=cfg.tune.enabled,
            cache=not args.no_cache,
            retries=args.retries if args.retries is not None else 0,
            model=args.model or "",
        )
        if res.night is not None:
            print(res.night.summary(args.model), file=sys.stderr)
            if not res.night.claimed:
                return 0
        _print_summary(res.report, res.certificate)
        print(res.report)
        return 0
    retries = args.retries if args.retries is not None else 2
    volume = kfp_client.Volume(args.pvc, args.pvc_mount) if args.pvc else None
    if args.action == "compile":
        print(
            kfp_client.compile_pipeline(
                cfg,
                args.output,
                retries=retries,
                tune=cfg.tune.enabled,
                volume=volume,
                model=args.model or "",
            )
        )
    elif args.action == "submit":
        run_id = kfp_client.submit(
            cfg,
            args.host,
            experiment=args.experiment,
            run_name=args.run_name,
            tune=cfg.tune.enabled,
            retries=retries,
            namespace=args.namespace,
            volume=volume,
            model=args.model or "",
        )
        print(run_id)
    else:
        sched = kfp_client.schedule(
            cfg,
            args.host,
            args.cron,
            experiment=args.experiment,
            job_name=args.job_name,
            pipeline_name=args.pipeline_name,
            tune=cfg.tune.enabled,
            retries=retries,
            namespace=args.namespace,
            max_concurrency=args.max_concurrency,
            volume=volume,
            model=args.model or "",
        )
        print(
            f"recurring run {sched.recurring_run_id}: cron '{sched.cron}', pipeline {sched.pipeline_id} "
            f"version {sched.version_id}, experiment {sched.experiment_id}",
            file=sys.stderr,
        )
        print(sched.recurring_run_id)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        cfg = config_from_args(args)
        from lethe.execution.ray_env import prefer_loopback

        prefer_loopback(cfg.resources)
        from lethe.pipeline import run_all, run_step
        from lethe.pipeline.layout import layout

        if args.command == "pipeline":
            return _pipeline(args, cfg)
        if args.command == "requests":
            from lethe.store import cli as store_cli

            return store_cli.run(args, cfg)
        if args.command == "nightly":
            return _nightly(args, cfg)
        if args.command == "certificate":
            return _verify_certificate(args, cfg)
        if args.command == "run":
            last: object = run_all(cfg)
            cert = layout(cfg).certificate_dir / "certificate.json"
            _print_summary(last, cert if cert.is_file() else None)
        else:
            out, _state = run_step(cfg, args.command)
            last = None
            if out is not None and not isinstance(out, dict):
                last = out if not hasattr(out, "to_json") else layout(cfg).manifest_uri
        # Ray's log monitor prints worker and raylet lines to stdout asynchronously: stop it first,
        # so the path we print really is the last line of stdout.
        _shutdown_ray()
        if last is not None:
            print(last, flush=True)
        return 0
    except KeyboardInterrupt:
        # `lethe run` has already ended its run (forget data deleted, certificate incomplete).
        print("lethe: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as e:  # noqa: BLE001 - the user gets one line for our errors, a traceback for bugs
        ours = find_lethe_error(e)
        if ours is None:
            raise
        print(f"lethe: error: {ours.line()}", file=sys.stderr)
        return 2
    finally:
        _shutdown_ray()


def _nightly(args: argparse.Namespace, cfg: RunConfig) -> int:
    from lethe.pipeline.layout import layout
    from lethe.pipeline.nightly import run_nightly

    night = run_nightly(cfg, args.model)
    _shutdown_ray()
    if night.claimed and night.report is not None:
        cert = layout(cfg).certificate_dir / "certificate.json"
        _print_summary(night.report, cert if cert.is_file() else None)
    print(night.summary(args.model or cfg.model_name), file=sys.stderr)
    if not night.claimed:
        return 0
    print(night.report, flush=True)
    return 0 if night.promoted else 1


def _print_summary(report_path: object, certificate: object = None) -> None:
    """The results summary on stderr (stdout's last line stays the report's path); a report that
    cannot be read (a remote work dir's local copy missing, say) just leaves it out."""
    import json
    from pathlib import Path

    from lethe.report.summary import summary_lines

    try:
        report = json.loads(Path(str(report_path)).read_text())
    except (OSError, ValueError):
        return
    _shutdown_ray()  # Ray's log monitor would interleave its lines with ours
    for line in summary_lines(report, str(certificate) if certificate else None):
        print(line, file=sys.stderr)
    sys.stderr.flush()


def _verify_certificate(args: argparse.Namespace, cfg: RunConfig) -> int:
    from lethe.signing import load_signing_key
    from lethe.tracking.certificates import verify
    from lethe.tracking.mlflow_tracker import Tracker

    trusted = set(args.key_id or [])
    if not trusted:
        own = load_signing_key(cfg.signing_key_path, create=False)
        if own is None:
            raise LetheError(
                "no trusted signing key",
                expected="--key-id ID, LETHE_SIGNING_KEY or the signing key file",
                seen=f"no {cfg.signing_key_path}",
            )
        trusted = {own.key_id}
    links = verify(args.target, Tracker(cfg.tracking_uri, cfg.tracking.experiment), trusted)
    for link in links:
        print(f"ok  {link.model or '-'}  {link.status}  sha256 {link.sha256[:16]}  {link.where}")
    print(
        f"verified: {len(links)} certificates, signed by {', '.join(sorted(trusted))}, back to the first version"
    )
    return 0


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parser", "LetheError"]
