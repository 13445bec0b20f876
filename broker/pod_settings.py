"""Parsing the operator's settings for the shape of task pods: GPU tolerations and resource
profiles (the rest of the settings: ``broker/settings.py``)."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import ValidationError

from broker import contract
from broker.settings_error import SettingsError

TOLERATION_KEYS = frozenset({"key", "operator", "value", "effect", "tolerationSeconds"})
TOLERATION_EFFECTS = frozenset({"", "NoSchedule", "PreferNoSchedule", "NoExecute"})


def check_toleration(toleration: Mapping[str, object]) -> None:
    """A Kubernetes toleration, checked as far as the API server would (SettingsError if not)."""

    def bad(why: str) -> SettingsError:
        return SettingsError(f"JOBQ_GPU_TOLERATIONS: {dict(toleration)!r} {why}")

    unknown = sorted(set(toleration) - TOLERATION_KEYS)
    if unknown:
        raise bad(f"has unknown keys {unknown}; allowed: {sorted(TOLERATION_KEYS)}")
    if any(not isinstance(toleration.get(k, ""), str) for k in ("key", "operator", "value", "effect")):
        raise bad("has a non-string key, operator, value or effect")
    operator = toleration.get("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise bad("has an operator other than Equal or Exists")
    if operator == "Exists" and toleration.get("value"):
        raise bad("has a value with operator Exists")
    if not toleration.get("key") and operator != "Exists":
        raise bad("has no key, which needs operator Exists")
    if toleration.get("effect", "") not in TOLERATION_EFFECTS:
        raise bad(f"has an effect not in {sorted(TOLERATION_EFFECTS - {''})}")
    seconds = toleration.get("tolerationSeconds")
    if seconds is not None and (
        not isinstance(seconds, int) or isinstance(seconds, bool) or toleration.get("effect") != "NoExecute"
    ):
        raise bad("has tolerationSeconds that is not an integer with effect NoExecute")


def parse_tolerations(raw: str) -> tuple[dict[str, object], ...]:
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise SettingsError(f"JOBQ_GPU_TOLERATIONS is not JSON: {exc}") from None
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise SettingsError("JOBQ_GPU_TOLERATIONS must be a JSON list of toleration objects")
    return tuple(value)


def parse_resource_profiles(raw: str) -> dict[str, contract.Resources]:
    """Overrides of built-in profiles; fields an override leaves out keep the built-in value."""
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
        if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
            raise ValueError("not a JSON object of profile name -> {cpu, memory, gpu}")
        unknown = sorted(set(value) - set(contract.PROFILES))
        if unknown:
            raise ValueError(
                f"only the built-in profiles {sorted(contract.PROFILES)} may be overridden, not {unknown}"
            )
    except ValueError as exc:
        raise SettingsError(f"JOBQ_RESOURCE_PROFILES: {exc}") from None
    profiles: dict[str, contract.Resources] = {}
    for name, res in value.items():
        try:
            merged = {**contract.PROFILES[name].model_dump(), **res}
            profiles[name] = contract.Resources.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise SettingsError(f"JOBQ_RESOURCE_PROFILES: profile {name!r}: {problems}") from None
    return profiles
