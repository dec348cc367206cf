"""Does a run get an oracle? (cache.oracle: reuse / retrain always; sample: a keyed random share of
runs; none: never, the training data it would be retrained on is gone.) Pure functions of the config
and the manifest, used by every step that needs the oracle."""

from __future__ import annotations

import hashlib
from typing import Any

from lethe.catalogue import AUTO
from lethe.config import RunConfig
from lethe.errors import ConfigError


def oracle_audit(cfg: RunConfig, man) -> dict[str, Any]:
    """Does this run get an oracle? The same answer in every step and process of the run: a pure
    function of the config and the retain shard's keyed digest (so of the cumulative forget set).

    Under `sample` the draw is uniform in [0, 1) and audited when below the share; it is keyed (the
    digest is an HMAC under the deployment's digest key), so whoever submits a request cannot tell
    in advance whether that night will be audited, and re-running the same night draws the same.
    """
    c = cfg.cache
    out: dict[str, Any] = {"policy": c.oracle, "audited": True}
    if c.oracle == "none":
        out["audited"] = False
        out["reason"] = "cache.oracle = none: the training data is not kept, so no oracle could be trained"
        return out
    if c.oracle == "sample":
        h = hashlib.sha256(b"lethe-oracle-audit|" + man.shards["retain"].digest.encode()).hexdigest()
        draw = int(h[:13], 16) / 16**13
        out.update(share=c.oracle_audit_share, draw=round(draw, 6))
        # A fixed method's tuning needs the oracle; method auto does without (it runs its first method
        # unsearched, lethe.pipeline.auto.no_search), so the sample policy still saves the oracle's cost.
        if cfg.tune.enabled and cfg.method != AUTO:
            out["reason"] = "audited: tuning needs the oracle (its objective is the distance to it)"
        elif draw < c.oracle_audit_share:
            out["reason"] = f"audited: drawn ({draw:.3f} < share {c.oracle_audit_share:g})"
        else:
            out["audited"] = False
            out["reason"] = (
                f"not audited: not drawn ({draw:.3f} >= share {c.oracle_audit_share:g}); no oracle was "
                "trained, so the gates that compare with it were not evaluated"
            )
            return out
    # what the yardstick learnt from (the report and the certificate say it): everything but the
    # forget set, the proxy retain set never
    out["trained_on"] = (
        f"the retain shard: the training data without the forget set ({man.shards['retain'].count} images)"
    )
    return out


def require_oracle(cfg: RunConfig, man, what: str) -> None:
    """One clear line when a step that cannot work without the oracle meets a run that has none."""
    audit = oracle_audit(cfg, man)
    if not audit["audited"]:
        raise ConfigError(
            f"{what} needs the oracle, and this run has none",
            where="cache.oracle",
            expected="reuse or retrain (or tune.enabled, which makes cache.oracle = sample audit the run)",
            seen=f"{cfg.cache.oracle}, {audit['reason']}",
        )
