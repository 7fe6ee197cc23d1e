"""Champion promotion by measurement: a challenger's and the champion's scores on the
challenger's frozen holdout, the decision between them, and the promotion ledger.

No Dagster and no MLflow here: the ``champion_model`` asset loads the versions and moves the
aliases; nothing heavy at import time either (the code location imports this module).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ml_platform.lib.store import ObjectStore

#: The ledger columns the champion_model asset shows (the newest entries first).
LEDGER_COLUMNS = (
    "at",
    "who",
    "decision",
    "challenger",
    "champion_before",
    "challenger_value",
    "champion_value",
    "reason",
)
#: How many of the newest ledger entries the asset shows.
LEDGER_SHOWN = 20


@dataclass(frozen=True)
class Contender:
    """A registered version in a promotion: its number, training week and measured score."""

    version: str
    week: str  # "" when the version's tags never recorded one
    value: float  # the metric on the challenger's frozen holdout


@dataclass(frozen=True)
class PromotionRules:
    """How the decision is taken (the asset's run config)."""

    metric: str
    margin: float
    force: bool
    pin_version: int | None


def holdout_value(model: Any, holdout: pd.DataFrame, threshold: float, metric: str) -> float:
    """``metric`` of ``model`` on ``holdout``; an undefined value never wins, so it is -inf."""
    from ml_platform.lib import modeling

    features = modeling.feature_columns(holdout)
    value = modeling.evaluate(model, holdout, features, threshold)[metric]
    return value if math.isfinite(value) else float("-inf")


def decide(
    challenger: Contender, champion: Contender | None, gate: str, rules: PromotionRules
) -> tuple[bool, str]:
    """Whether ``challenger`` becomes champion, and why. ``gate`` is the challenger's quality
    gate tag: a version that failed its blocking checks is promoted only when forced or pinned."""
    if champion is not None and champion.version == challenger.version:
        return False, "the challenger already is the champion"
    if rules.pin_version is not None:
        return True, f"pinned to version {rules.pin_version} by run config"
    if gate != "passed" and not rules.force:
        return False, "the challenger failed its blocking quality checks"
    if rules.force:
        return True, "forced by run config"
    if champion is None:
        return True, "no champion yet"
    if challenger.week < champion.week:
        return False, "the challenger was trained on an older week than the champion"
    if challenger.value >= champion.value + rules.margin:
        return True, f"{rules.metric} better by at least {rules.margin}"
    return False, f"{rules.metric} not better by {rules.margin}"


def append_to_ledger(store: ObjectStore, key: str, entry: dict[str, Any]) -> list[dict]:
    """The promotion ledger at ``key`` with ``entry`` appended (and written back)."""
    ledger = json.loads(store.read_bytes(key)) if store.exists(key) else []
    ledger.append(entry)
    store.put_bytes(json.dumps(ledger, indent=2).encode(), key)
    return ledger


def ledger_rows(ledger: list[dict]) -> list[dict]:
    """The newest ledger entries, newest first, with the columns the asset page shows."""
    return [{k: e[k] for k in LEDGER_COLUMNS} for e in reversed(ledger[-LEDGER_SHOWN:])]
