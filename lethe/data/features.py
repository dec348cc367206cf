"""Features of a data set, as the classes that carry them (request.kind "feature").

STUB for the feature-unlearning branch: the lead engineer's data work on main owns this contract
(`feature_classes(class_names, dataset, feature) -> list[str]`); this minimal version only resolves
a class name to itself and "glasses" on avataaars, so the generator pipeline can run end to end.
"""

from __future__ import annotations

from collections.abc import Sequence

from lethe.errors import DataError

# Named features per data set: feature -> the classes that show it (every other class lacks it).
_FEATURES: dict[str, dict[str, tuple[str, ...]]] = {
    "avataaars": {
        "glasses": ("kurt", "prescription_01", "prescription_02", "round", "sunglasses", "wayfarers"),
    },
}


def feature_classes(class_names: Sequence[str], dataset: str, feature: str) -> list[str]:
    """The classes carrying `feature`: a named feature of the data set, or a class name (its own
    feature, matched case-insensitively when unambiguous)."""
    named = _FEATURES.get(dataset, {})
    if feature in named:
        return [c for c in class_names if c in named[feature]]
    if feature in class_names:
        return [feature]
    lowered = [c for c in class_names if c.lower() == feature.lower()]
    if len(lowered) == 1:
        return lowered
    raise DataError(
        "unknown feature",
        where="request.feature",
        expected="one of: " + ", ".join([*named, *class_names]),
        seen=repr(feature),
    )
