"""The report.json contract (DESIGN.md section 7): validation, oracle gaps, atomic writing.

Users script against report.json, so a report that misses a key must fail when it is written, with
the exact key path in the message, not later in somebody's notebook. Extra keys are allowed (for
example metrics for other masks under a separate key); the keys below are the floor.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "MODELS",
    "SPLITS",
    "REQUIRED_METRICS",
    "NULLABLE_METRICS",
    "REQUEST_KINDS",
    "DIGEST_ALGORITHMS",
    "FORBIDDEN_KEYS",
    "FEATURE_METRICS",
    "FEATURE_SPLIT",
    "validate_report",
    "oracle_gaps",
    "distance_to_oracle",
    "DISTANCE_NAMES",
    "write_report_json",
    "atomic_write_bytes",
]

MODELS: tuple[str, ...] = ("original", "unlearned", "oracle")
SPLITS: tuple[str, ...] = ("forget", "retain")
REQUIRED_METRICS: dict[str, tuple[str, ...]] = {
    "retain": ("psnr", "ssim", "fd", "embed_cos"),
    "forget": ("psnr", "ssim", "fd", "embed_cos", "mia_auc"),
}
REQUEST_KINDS: tuple[str, ...] = ("classes", "ids", "feature")
# request.digest_algorithm: "hmac-sha256" (keyed, lethe.digests; request.digest_key_id names the key)
# or "sha256" (unkeyed, from a split made before digests were keyed). Both keys are optional.
DIGEST_ALGORITHMS: tuple[str, ...] = ("hmac-sha256", "sha256")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
# Feature unlearning of a generator (request kind "feature", DESIGN.md 2.3): the models are compared
# on their samples from one fixed set of latents, under metrics[model]["samples"].
FEATURE_SPLIT = "samples"
FEATURE_METRICS: tuple[str, ...] = (
    "flagged_share",  # share of samples the binary feature classifier flags
    "fd",  # Frechet distance of samples vs held-out real images, project featnet space
    "class_score",  # exp(E KL(p(y|x) || p(y))) on featnet posteriors (Inception-Score form, not IS)
    "attack_success",  # share of PGD attacks over z that end flagged
    "attack_mean_prob",  # mean p(feature) of the attacks' best latents
    "fd_without_feature",  # FD vs held-out real images without the feature (the sample_fd gate's)
)
_FEATURE_KEYS: tuple[str, ...] = ("feature", "classes", "direction", "attack", "n_eval")
# Privacy guard: the ids of a forget request must never be copied into a report or an artifact.
FORBIDDEN_KEYS: frozenset[str] = frozenset({"ids", "forget_ids"})

_MLFLOW_KEYS: tuple[str, ...] = ("tracking_uri", "run_id", "model_name", "model_version")
# null when the split has too few images for the figure to mean anything (fd: lethe.metrics.fd_min_samples)
NULLABLE_METRICS: frozenset[str] = frozenset({"fd"})


def _is_number(x: Any) -> bool:
    # bool is an int subclass but "true" is never a metric; numpy scalars register as numbers.Real.
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool) and type(x).__name__ != "bool_"


def _find_forbidden(obj: Any, path: str) -> str | None:
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            sub = f"{path}.{key}"
            if str(key) in FORBIDDEN_KEYS:
                return sub
            found = _find_forbidden(value, sub)
            if found:
                return found
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_forbidden(value, f"{path}[{i}]")
            if found:
                return found
    return None


def _get(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise ValueError(f"{path}.{key}: missing")
    return obj[key]


def _mapping(obj: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected an object, got {type(obj).__name__}")
    return obj


def _str(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = _get(obj, key, path)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}.{key}: expected a non-empty string, got {value!r}")
    return value


def _finite(value: Any, path: str) -> None:
    if not _is_number(value):
        raise ValueError(f"{path}: expected a number, got {value!r}")
    if not math.isfinite(float(value)):
        # NaN/inf are not valid JSON; scripts reading the report (jq, JS) would choke on them.
        raise ValueError(f"{path}: expected a finite number, got {value!r}")


def _interval(value: Any, path: str) -> None:
    """A 95% interval: [low, high], two finite numbers, low <= high."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{path}: expected [low, high], got {value!r}")
    for i, v in enumerate(value):
        _finite(v, f"{path}[{i}]")
    if float(value[0]) > float(value[1]):
        raise ValueError(f"{path}: low {value[0]!r} is above high {value[1]!r}")


def validate_report(report: dict) -> None:
    """Raise ValueError naming the first missing or invalid key path, e.g.
    "report.metrics.unlearned.forget.fd: missing". Returns None when the report is valid."""
    root = "report"
    rep = _mapping(report, root)
    bad = _find_forbidden(rep, root)
    if bad:
        raise ValueError(f"{bad}: forbidden key (forget ids never go into reports)")

    for key in ("run_id", "dataset", "family", "method"):
        _str(rep, key, root)

    req_path = f"{root}.request"
    req = _mapping(_get(rep, "request", root), req_path)
    kind = _str(req, "kind", req_path)
    if kind not in REQUEST_KINDS:
        raise ValueError(f"{req_path}.kind: expected one of {', '.join(REQUEST_KINDS)}, got {kind!r}")
    for key in ("forget_count", "retain_count"):
        value = _get(req, key, req_path)
        if not _is_int(value) or value < 0:
            raise ValueError(f"{req_path}.{key}: expected a non-negative integer, got {value!r}")
    _str(req, "forget_digest", req_path)
    _validate_digest_key(req, req_path)

    met_path = f"{root}.metrics"
    metrics = _mapping(_get(rep, "metrics", root), met_path)
    required = {FEATURE_SPLIT: FEATURE_METRICS} if kind == "feature" else REQUIRED_METRICS
    models = MODELS
    if not _oracle_audited(rep, root):
        # A run without an oracle (cache.oracle = sample): no oracle metrics, and no membership
        # attack (it is calibrated against the oracle). Oracle figures here would be invented.
        if "oracle" in metrics:
            raise ValueError(f"{met_path}.oracle: present, but report.oracle.audited is false")
        models = tuple(m for m in MODELS if m != "oracle")
        required = {s: tuple(n for n in names if n != "mia_auc") for s, names in required.items()}
    for model in models:
        model_path = f"{met_path}.{model}"
        per_model = _mapping(_get(metrics, model, met_path), model_path)
        for split, names in required.items():
            split_path = f"{model_path}.{split}"
            per_split = _mapping(_get(per_model, split, model_path), split_path)
            for name in names:
                value = _get(per_split, name, split_path)
                if value is None and name in NULLABLE_METRICS:
                    continue
                _finite(value, f"{split_path}.{name}")
            for name, value in per_split.items():
                if name.endswith("_ci95") and value is not None:
                    _interval(value, f"{split_path}.{name}")
    if kind == "feature":
        _validate_feature(rep, root)

    timing_path = f"{root}.timing_s"
    timing = _mapping(_get(rep, "timing_s", root), timing_path)
    for step, seconds in timing.items():
        _finite(seconds, f"{timing_path}.{step}")
        if float(seconds) < 0:
            raise ValueError(f"{timing_path}.{step}: expected seconds >= 0, got {seconds!r}")

    if "tune" in rep:
        _validate_tune(_mapping(rep["tune"], f"{root}.tune"), f"{root}.tune")
    if isinstance(rep.get("unlearn"), Mapping):
        _validate_unlearn(rep["unlearn"], f"{root}.unlearn")

    ml_path = f"{root}.mlflow"
    ml = _mapping(_get(rep, "mlflow", root), ml_path)
    for key in ("tracking_uri", "run_id", "model_name"):
        _str(ml, key, ml_path)
    # model_version is None when the unlearned model was not (yet) registered / promoted.
    version = _get(ml, "model_version", ml_path)
    if version is not None and not (isinstance(version, str) or _is_int(version)):
        raise ValueError(f"{ml_path}.model_version: expected a string, integer or null, got {version!r}")


def _validate_feature(rep: Mapping[str, Any], root: str) -> None:
    """A feature request's `feature` key: the direction found and the attack run."""
    feat_path = f"{root}.feature"
    feat = _mapping(_get(rep, "feature", root), feat_path)
    for key in _FEATURE_KEYS:
        _get(feat, key, feat_path)
    _str(feat, "feature", feat_path)
    direction = _mapping(feat["direction"], f"{feat_path}.direction")
    for key in ("threshold", "norm", "n_pos", "n_neg"):
        _finite(_get(direction, key, f"{feat_path}.direction"), f"{feat_path}.direction.{key}")
    attack = _mapping(feat["attack"], f"{feat_path}.attack")
    for key in ("eps", "step", "steps", "n"):
        _finite(_get(attack, key, f"{feat_path}.attack"), f"{feat_path}.attack.{key}")


def _oracle_audited(rep: Mapping[str, Any], root: str) -> bool:
    """report.oracle (optional: absent in reports from before the sample policy, which always had an
    oracle): {policy, audited, ...}; audited must be a boolean."""
    if "oracle" not in rep:
        return True
    path = f"{root}.oracle"
    audited = _get(_mapping(rep["oracle"], path), "audited", path)
    if not isinstance(audited, bool):
        raise ValueError(f"{path}.audited: expected true or false, got {audited!r}")
    return audited


def _validate_digest_key(req: Mapping[str, Any], path: str) -> None:
    """Which algorithm and key made the digests: absent in reports from before keyed digests; a keyed
    digest names its key (16 hex characters, lethe.digests.key_id), an unkeyed one has none."""
    algo, key_id = req.get("digest_algorithm"), req.get("digest_key_id")
    if algo is None and key_id is None:
        return
    if algo not in DIGEST_ALGORITHMS:
        raise ValueError(
            f"{path}.digest_algorithm: expected one of {', '.join(DIGEST_ALGORITHMS)}, got {algo!r}"
        )
    if algo == "hmac-sha256" and not (isinstance(key_id, str) and _KEY_ID_RE.match(key_id)):
        raise ValueError(f"{path}.digest_key_id: expected 16 lower-case hex characters, got {key_id!r}")
    if algo == "sha256" and key_id is not None:
        raise ValueError(f"{path}.digest_key_id: expected null for unkeyed sha256 digests, got {key_id!r}")


def _validate_unlearn(unlearn: Mapping[str, Any], path: str) -> None:
    if "proxy_retain" in unlearn:
        proxy = _mapping(unlearn["proxy_retain"], f"{path}.proxy_retain")
        count = proxy.get("images")
        if not isinstance(proxy.get("dataset"), str) or not isinstance(count, int) or count < 1:
            raise ValueError(
                f"{path}.proxy_retain: expected {{dataset: name, images: count >= 1}}, got {dict(proxy)!r}"
            )
    if "auto" in unlearn:  # method auto that could not search: what ran instead, and why
        auto = _mapping(unlearn["auto"], f"{path}.auto")
        if auto.get("searched") is not False or not all(
            isinstance(auto.get(k), str) for k in ("chosen", "why")
        ):
            raise ValueError(
                f"{path}.auto: expected {{searched: false, chosen: method, why: text}}, got {dict(auto)!r}"
            )
    if "lr_rule" in unlearn:  # the data-relative lr rule: which, and the lr it gave
        rule = _mapping(unlearn["lr_rule"], f"{path}.lr_rule")
        lr, scale = rule.get("lr"), rule.get("scale")
        if rule.get("rule") not in ("relative", "fixed") or not all(
            isinstance(v, int | float) and 0 < v for v in (lr, scale)
        ):
            raise ValueError(
                f"{path}.lr_rule: expected {{rule: relative or fixed, lr > 0, scale > 0, ...}}, got {dict(rule)!r}"
            )
    if "checkpoint" in unlearn:
        _validate_checkpoint(_mapping(unlearn["checkpoint"], f"{path}.checkpoint"), f"{path}.checkpoint")


def _validate_checkpoint(ck: Mapping[str, Any], path: str) -> None:
    """Optional unlearn.checkpoint: the best scored checkpoint (its step, objective and every scored
    step) or the last one with the reason no checkpoint was scored."""
    kept = _get(ck, "kept", path)
    if kept == "last":
        _str(ck, "reason", path)
        return
    if kept != "best":
        raise ValueError(f"{path}.kept: expected 'best' or 'last', got {kept!r}")
    for key in ("step", "last_step"):
        if not _is_int(_get(ck, key, path)):
            raise ValueError(f"{path}.{key}: expected an integer step, got {ck[key]!r}")
    _finite(_get(ck, "objective", path), f"{path}.objective")
    history = _get(ck, "history", path)
    if not isinstance(history, list) or not history:
        raise ValueError(f"{path}.history: expected a non-empty list of scored steps, got {history!r}")
    for i, row in enumerate(history):
        rp = f"{path}.history[{i}]"
        row = _mapping(row, rp)
        _finite(_get(row, "step", rp), f"{rp}.step")
        _finite(_get(row, "objective", rp), f"{rp}.objective")


def _validate_tune(tune: Mapping[str, Any], path: str) -> None:
    """Optional `tune` key (present when Ray Tune ran): every trial with its objective, and the best."""
    trials = _get(tune, "trials", path)
    if not isinstance(trials, list) or not trials:
        raise ValueError(f"{path}.trials: expected a non-empty list, got {trials!r}")
    for i, trial in enumerate(trials):
        tp = f"{path}.trials[{i}]"
        trial = _mapping(trial, tp)
        _str(trial, "trial_id", tp)
        _str(trial, "status", tp)
        for key in ("alpha", "lr"):
            _finite(_get(trial, key, tp), f"{tp}.{key}")
        objective = _get(trial, "objective", tp)
        # None: the trial failed before reporting (its status says so); otherwise a finite number.
        if objective is not None:
            _finite(objective, f"{tp}.objective")
    if "selection" in tune:  # method auto: which method the search chose, and why
        sel = _mapping(tune["selection"], f"{path}.selection")
        _str(sel, "chosen", f"{path}.selection")
        _str(sel, "why", f"{path}.selection")
        if sel.get("auto") and sel["chosen"] not in _mapping(_get(sel, "by_method", f"{path}.selection"), ""):
            raise ValueError(f"{path}.selection.chosen: {sel['chosen']!r} is not among the searched methods")
    best_path = f"{path}.best"
    best = _mapping(_get(tune, "best", path), best_path)
    for key in ("alpha", "lr", "objective"):
        _finite(_get(best, key, best_path), f"{best_path}.{key}")


def oracle_gaps(metrics: dict) -> dict:
    """Distance of original and unlearned from the oracle (retrained without the forget set).

    gaps[model][split][name] = {"diff": value - oracle, "ratio": value / oracle or None}. The ratio
    is given for fd only (a distance, where "x times the oracle" reads naturally) and only when the
    oracle value is > 0. Names present in both the model and the oracle are covered, extras included.
    """
    gaps: dict[str, dict[str, dict[str, dict[str, float | None]]]] = {}
    oracle = metrics.get("oracle", {})
    for model in ("original", "unlearned"):
        per_model = metrics.get(model, {})
        for split in SPLITS:
            values = per_model.get(split, {})
            refs = oracle.get(split, {})
            for name, value in values.items():
                ref = refs.get(name)
                if not (_is_number(value) and _is_number(ref)):
                    continue
                ratio = float(value) / float(ref) if name == "fd" and float(ref) > 0 else None
                gaps.setdefault(model, {}).setdefault(split, {})[name] = {
                    "diff": float(value) - float(ref),
                    "ratio": ratio,
                }
    return gaps


# Forget-set figures of "how far from the oracle" (DESIGN.md 2.2: the target is close to the oracle,
# not as bad as possible): name -> (metric, relative?). fd is relative (distances scale with the data);
# the bounded scores are absolute differences.
DISTANCE_NAMES: dict[str, tuple[str, bool]] = {
    "fd_rel": ("fd", True),
    "psnr_abs": ("psnr", False),
    "ssim_abs": ("ssim", False),
    "embed_cos_abs": ("embed_cos", False),
    "mia_auc_abs": ("mia_auc", False),
}


def distance_to_oracle(metrics: dict) -> dict:
    """Distance to the oracle on held-out forget data, per model (oracle included: 0 by definition).

    fd_rel = |FD(model) - FD(oracle)| / FD(oracle); psnr_abs = |PSNR(model) - PSNR(oracle)| (dB);
    ssim_abs, embed_cos_abs, mia_auc_abs likewise. Unlike `oracle_gaps` (signed differences) these
    are unsigned, so under- and over-forgetting count alike and two methods compare at a glance.
    A name is left out when a value is missing or FD(oracle) is 0.
    """
    ref = metrics.get("oracle", {}).get("forget", {})
    out: dict[str, dict[str, float]] = {}
    for model in MODELS:
        values = metrics.get(model, {}).get("forget", {})
        row: dict[str, float] = {}
        for name, (metric, relative) in DISTANCE_NAMES.items():
            v, r = values.get(metric), ref.get(metric)
            if not (_is_number(v) and _is_number(r)):
                continue
            if relative:
                if float(r) <= 0:
                    continue
                row[name] = abs(float(v) - float(r)) / float(r)
            else:
                row[name] = abs(float(v) - float(r))
        if row:
            out[model] = row
    return out


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temp file in the same directory + os.replace, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def _json_default(obj: Any) -> Any:
    # numpy / torch scalars and paths turn up in reports built from metric code; store plain values.
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"report value of type {type(obj).__name__} is not JSON serialisable")


def _find_nonfinite(obj: Any, path: str) -> str | None:
    if isinstance(obj, Mapping):
        items: Any = ((f"{path}.{k}", v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(obj))
    else:
        return path if _is_number(obj) and not math.isfinite(float(obj)) else None
    for sub, value in items:
        found = _find_nonfinite(value, sub)
        if found:
            return found
    return None


def write_report_json(report: dict, path: Path) -> Path:
    """Validate, then write report.json atomically (indent 2, sorted keys, strict JSON)."""
    validate_report(report)
    # Extra (unvalidated) keys may still hold NaN; name the path rather than json's generic error.
    bad = _find_nonfinite(report, "report")
    if bad:
        raise ValueError(f"{bad}: expected a finite number (NaN/inf are not valid JSON)")
    text = json.dumps(report, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
    return atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))
