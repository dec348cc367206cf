"""`lethe requests submit | list | show | cancel | audit`: the request store from the command line.

A request's ids are read from the file given to `submit` and kept in the store only: nothing here
prints them (`show` gives their count and keyed digest).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, time, timezone
from typing import Any

from lethe.errors import ConfigError
from lethe.store.schema import STATUSES

ACTIONS = {
    "submit": "record a deletion request and check it against the data set (prints its uuid)",
    "list": "a table of requests (filter by --status, --overdue, --model)",
    "show": "one request: status, counts, deadline, attempts, the version that applied it",
    "cancel": "cancel a request that no run holds",
    "audit": "every status change of a request: when, who, from, to, why",
}


def store_flags(p: argparse.ArgumentParser) -> None:
    """The flags every store command takes: where the work dir and store are, which data set."""
    g = p.add_argument_group("run configuration")
    g.add_argument("--config", help="YAML file with RunConfig fields")
    g.add_argument(
        "--preset", choices=("smoke", "demo"), help="smoke: tiny, what tests use; demo: the default"
    )
    g.add_argument("--dataset", help="the data set requests are checked against (as for `lethe run`)")
    g.add_argument("--workdir", help="the work dir (the default store is <workdir>/requests.db)")
    g.add_argument("--cache-dir", help="where the digest and signing keys live (default: <workdir>/../cache)")
    g.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite in the work dir)")
    g.add_argument(
        "--requests-db",
        metavar="URL",
        help="sqlite:///PATH or postgresql+psycopg://user@host/db (password from PGPASSWORD, never in the URL)",
    )
    g.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_parsers(sub: Any) -> None:
    req = sub.add_parser("requests", help="deletion requests: submit, list, show, cancel, audit")
    acts = req.add_subparsers(dest="action", required=True, metavar="{" + ",".join(ACTIONS) + "}")
    for action, text in ACTIONS.items():
        p = acts.add_parser(action, help=text, description=text)
        store_flags(p)
        if action == "submit":
            p.add_argument("--model", help="registered model the request applies to (default: the run's)")
            what = p.add_mutually_exclusive_group(required=True)
            what.add_argument(
                "--ids", metavar="FILE", help="file with one image id per line ('#' lines are comments)"
            )
            what.add_argument("--classes", metavar="A,B", help="comma-separated class names")
            what.add_argument("--feature", metavar="NAME", help="a visual feature (gan/vae families)")
            p.add_argument(
                "--reference", help="the requester's opaque reference (a ticket number; no personal data)"
            )
            p.add_argument(
                "--deadline", metavar="DATE", help="YYYY-MM-DD or ISO time, UTC (default: +30 days)"
            )
        elif action == "list":
            p.add_argument("--status", choices=STATUSES)
            p.add_argument("--overdue", action="store_true", help="past their deadline and not yet final")
            p.add_argument("--model", help="one registered model's requests")
        else:
            p.add_argument(
                "id", metavar="ID", help="request uuid (or an unambiguous prefix of 8+ characters)"
            )
            if action == "cancel":
                p.add_argument(
                    "--reason", default="cancelled by the requester", help="recorded in the audit trail"
                )


def parse_deadline(text: str) -> datetime:
    try:
        if len(text) == 10:
            return datetime.combine(
                datetime.fromisoformat(text).date(), time(23, 59, 59), tzinfo=timezone.utc
            )
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            "bad deadline", where="--deadline", expected="YYYY-MM-DD or an ISO time", seen=repr(text)
        ) from None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def _when(dt: datetime | None) -> str:
    return dt.strftime("%Y-%m-%d %H:%M") if dt else "-"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    )


def _what(r: Any) -> str:
    from lethe.store.lifecycle import payload_of

    if r.kind == "ids":
        return f"{r.n_items} id" + ("s" if r.n_items != 1 else "")
    p = payload_of(r)
    return ",".join(p["classes"]) if r.kind == "classes" else f"feature {p['feature']}"


def run(args: argparse.Namespace, cfg: Any) -> int:
    from lethe.store import lifecycle
    from lethe.store.db import open_store

    store = open_store(cfg.requests_db_url)
    try:
        if args.action == "submit":
            return _submit(args, cfg, store)
        if args.action == "list":
            now = lifecycle.now_utc()
            rows = lifecycle.list_requests(
                store, status=args.status, model_name=args.model, overdue=args.overdue
            )
            body = [
                [
                    r.id,
                    r.model_name,
                    _what(r),
                    r.status,
                    _when(r.received_at),
                    _when(r.deadline),
                    "-" if r.status in lifecycle.FINAL else f"{(r.deadline - now).days}d",
                    str(r.attempts),
                    r.applied_version or "-",
                ]
                for r in rows
            ]
            head = ["id", "model", "what", "status", "received", "deadline", "left", "tries", "version"]
            print(_table(body, head) if body else "no requests")
            return 0
        if args.action == "show":
            r = lifecycle.get(store, args.id)
            for k, v in [
                ("id", r.id),
                ("model", r.model_name),
                ("kind", r.kind),
                ("what", _what(r)),
                ("digest", f"{r.digest} (key {r.key_id})"),
                ("reference", r.reference or "-"),
                ("status", r.status),
                ("received", _when(r.received_at)),
                ("deadline", _when(r.deadline)),
                ("attempts", str(r.attempts)),
                ("last error", r.last_error or "-"),
                ("claimed by", r.claimed_by or "-"),
                (
                    "applied in",
                    f"version {r.applied_version} at {_when(r.applied_at)}" if r.applied_version else "-",
                ),
                ("certificate", r.certificate or "-"),
            ]:
                print(f"{k:<12} {v}")
            return 0
        if args.action == "cancel":
            r = lifecycle.cancel(store, args.id, reason=args.reason)
            print(f"request {r.id} cancelled", file=sys.stderr)
            print(r.id)
            return 0
        rows = lifecycle.audit(store, args.id)
        print(
            _table(
                [[_when(a.at), a.actor, a.from_status or "-", a.to_status, a.reason] for a in rows],
                ["at", "actor", "from", "to", "reason"],
            )
        )
        return 0
    finally:
        store.close()


def _submit(args: argparse.Namespace, cfg: Any, store: Any) -> int:
    from lethe import digests
    from lethe.data.split import read_ids_file
    from lethe.store import lifecycle
    from lethe.store.check import DataView, check_request

    if args.ids is not None:
        kind, payload = "ids", {"ids": read_ids_file(args.ids)}
    elif args.classes is not None:
        kind, payload = "classes", {"classes": [c.strip() for c in args.classes.split(",") if c.strip()]}
    else:
        kind, payload = "feature", {"feature": args.feature.strip()}
    model = args.model or cfg.model_name
    deadline = parse_deadline(args.deadline) if args.deadline else None
    live = ("queued", "in_progress", "failed", "needs_attention", "applied")
    others = [r for r in lifecycle.list_requests(store, model_name=model) if r.status in live]

    def check() -> None:
        check_request(DataView(cfg), kind, payload, others)

    r = lifecycle.submit(
        store,
        model_name=model,
        kind=kind,
        payload=payload,
        key=digests.load_key(cfg.digest_key_path),
        check=check,
        reference=args.reference,
        deadline=deadline,
        deadline_days=cfg.requests.deadline_days,
    )
    print(f"request {r.id} queued for {model}: {_what(r)}, deadline {_when(r.deadline)} UTC", file=sys.stderr)
    print(r.id)
    return 0
