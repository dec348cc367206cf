"""`lethe` command line: `lethe run` runs the whole pipeline, `lethe <step>` one step (DESIGN.md 7).

Flags are a thin layer over `RunConfig`: preset < --config YAML < flags. A LetheError becomes one
line on stderr and exit code 2; nothing else is printed to stdout after the report path.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from lethe.config import FAMILIES, METHODS, PRESETS, RunConfig, build_config
from lethe.errors import LetheError, find_lethe_error

STEP_HELP = {
    "split": "split the data set into forget / retain / held-out shards (Ray Data)",
    "pretrain": "train the original model and the feature net (Ray Train; cached)",
    "oracle": "retrain from scratch on retain only (Ray Train; cached)",
    "unlearn": "unlearn the forget set from the original model (Ray Train)",
    "tune": "search alpha and lr with Ray Tune (ASHA; each trial a Ray Train run); writes tune/best.json",
    "evaluate": "compare original / unlearned / oracle on held-out data; write the report",
    "promote": "register the unlearned model in the MLflow registry",
    "cleanup": "delete the forget shards and record the deletion",
}


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run configuration")
    g.add_argument("--config", help="YAML file with RunConfig fields")
    g.add_argument("--preset", choices=PRESETS, help="smoke: tiny, what tests use; demo: the default")
    g.add_argument(
        "--dataset", help="fashion-mnist | digits | path to an IDX dir, image folder or Parquet data set"
    )
    g.add_argument("--forget-classes", help="comma-separated class names to forget")
    g.add_argument("--forget-ids", metavar="FILE", help="file with one id to forget per line")
    g.add_argument("--family", choices=FAMILIES)
    g.add_argument("--method", choices=METHODS)
    g.add_argument("--alpha", type=float, help="forget-loss weight")
    g.add_argument("--workdir", help="where shards, models, reports and the MLflow store go")
    g.add_argument("--cache-dir", help="model cache shared between runs (default: <workdir>/../cache)")
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
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lethe", description="Make image generative models forget data, and prove it."
    )
    sub = p.add_subparsers(dest="command", required=True)
    _common(sub.add_parser("run", help="run the whole pipeline and print the path of report.json"))
    for name, text in STEP_HELP.items():
        _common(sub.add_parser(name, help=text))
    pipe = sub.add_parser("pipeline", help="Kubeflow pipeline commands")
    pipe.add_argument("action", choices=["compile", "run", "submit", "schedule"])
    return p


def overrides_from_args(a: argparse.Namespace) -> dict[str, Any]:
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
    put("family", a.family)
    put("method", a.method)
    put("unlearn.alpha", a.alpha)
    put("workdir", a.workdir)
    put("cache_dir", a.cache_dir)
    put("tracking.tracking_uri", a.tracking_uri)
    put("resources.num_workers", a.num_workers)
    put("resources.use_gpu", a.use_gpu)
    put("resources.ray_address", a.ray_address)
    put("storage.uri", a.storage)
    put("tune.enabled", a.tune)
    put("seed", a.seed)
    return o


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "pipeline":
        print("lethe pipeline: the Kubeflow pipeline commands are not available yet", file=sys.stderr)
        return 2
    _setup_logging(args.verbose)
    try:
        cfg = config_from_args(args)
        from lethe import steps

        if args.command == "run":
            last: object = steps.run_all(cfg)
        else:
            out = steps.run_step(cfg, args.command)
            last = None
            if out is not None and not isinstance(out, dict):
                last = out if not hasattr(out, "to_json") else steps.layout(cfg).manifest_uri
        # Ray's log monitor prints worker and raylet lines to stdout asynchronously: stop it first,
        # so the path we print really is the last line of stdout.
        _shutdown_ray()
        if last is not None:
            print(last, flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - the user gets one line for our errors, a traceback for bugs
        ours = find_lethe_error(e)
        if ours is None:
            raise
        print(f"lethe: error: {ours.line()}", file=sys.stderr)
        return 2
    finally:
        _shutdown_ray()


def _shutdown_ray() -> None:
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["main", "parser", "LetheError"]
