"""Whether a model has earned the next degree of automation, or must give its current one back.

Degrees, in order: shadow -> assist -> partial -> full (serving/gateway/routing.py). A move up is
judged on the reviews of this model version in its current degree (core.config.AutomationConfig:
enough reviewed cases, agreement overall and in every judged slice, and in assist the override
rate, in partial the referral rate). A move down is due when agreement in the current degree fell
under that degree's floor: it needs no approval. The rules and the observed numbers travel
together in the verdict, so a person deciding on an approval sees exactly what was measured.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from core.config import AUTOMATION_DEGREES, AutomationConfig
from core.errors import DataError
from monitoring.agreement import AgreementResult, GroupAgreement


@dataclasses.dataclass(frozen=True)
class RuleCheck:
    """One rule of a move: what was observed against its threshold."""

    name: str  # min_reviewed | min_agreement | min_slice_agreement | max_override_rate | max_referral_rate | floor
    observed: float | None  # None: nothing to measure (no reviews)
    threshold: float
    met: bool
    detail: str  # e.g. which slice was worst

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        observed = "n/a" if self.observed is None else _number(self.name, self.observed)
        sign = "<=" if self.name.startswith("max_") else ">="
        verdict = "ok" if self.met else "NOT MET"
        return f"{self.name}: {observed} (needs {sign} {_number(self.name, self.threshold)}) {verdict}" + (
            f"; {self.detail}" if self.detail else "")


def _number(name: str, value: float) -> str:
    return f"{int(value)}" if name == "min_reviewed" else f"{value:.1%}"


@dataclasses.dataclass(frozen=True)
class ReadinessVerdict:
    """For one model version in its current degree: may it move up, must it move down."""

    model_name: str
    model_version: int | None
    current: str
    next: str | None  # None in full
    meets: bool  # the rules for `next` are all met
    rules: tuple[RuleCheck, ...]
    move_down: bool  # agreement fell under the current degree's floor
    move_down_to: str | None
    floor: RuleCheck | None  # None in shadow (nothing below it)
    suggestions: tuple[str, ...]  # e.g. narrowing the band of partial
    evidence: GroupAgreement | None

    @property
    def action(self) -> str:
        """`down`, `up` (ready, needs approval) or `stay`."""
        if self.move_down:
            return "down"
        return "up" if self.meets else "stay"

    def to_json(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model_version": self.model_version, "current": self.current,
                "next": self.next, "meets": self.meets, "action": self.action, "rules": [r.to_json() for r in self.rules],
                "move_down": self.move_down, "move_down_to": self.move_down_to,
                "floor": self.floor.to_json() if self.floor else None, "suggestions": list(self.suggestions),
                "evidence": self.evidence.to_json() if self.evidence else None}

    def describe(self) -> str:
        """Lines a person reads before approving."""
        lines = [f"{self.model_name}:{self.model_version} serves in {self.current}"]
        evidence = self.evidence
        if evidence is not None and evidence.reviewed:
            lines.append(f"evidence in {self.current}: {evidence.reviewed} reviewed of {evidence.served} served, "
                         f"agreement {evidence.agreement:.1%}, kappa "
                         f"{'n/a' if evidence.kappa is None else f'{evidence.kappa:.3f}'}")
        else:
            lines.append(f"evidence in {self.current}: no reviewed cases")
        if self.next:
            lines.append(f"rules for {self.current} -> {self.next}: {'MET' if self.meets else 'not met'}")
            lines += [f"  {rule.describe()}" for rule in self.rules]
        if self.floor is not None:
            lines.append(f"floor of {self.current}: {self.floor.describe()}")
        if self.move_down:
            lines.append(f"agreement fell under the floor: move down to {self.move_down_to}")
        lines += [f"suggestion: {s}" for s in self.suggestions]
        return "\n".join(lines)


def next_degree(degree: str) -> str | None:
    check_degree(degree)
    index = AUTOMATION_DEGREES.index(degree)
    return AUTOMATION_DEGREES[index + 1] if index + 1 < len(AUTOMATION_DEGREES) else None


def previous_degree(degree: str) -> str | None:
    check_degree(degree)
    index = AUTOMATION_DEGREES.index(degree)
    return AUTOMATION_DEGREES[index - 1] if index else None


def check_degree(degree: str) -> None:
    if degree not in AUTOMATION_DEGREES:
        raise DataError(f"degree of automation must be one of {list(AUTOMATION_DEGREES)}, got {degree!r}")


def assess_readiness(agreement: AgreementResult, model_version: int | None, current: str,
                     config: AutomationConfig) -> ReadinessVerdict:
    """The verdict for `model_version` serving in `current`, from its reviews in `current`."""
    following = next_degree(current)
    evidence = agreement.group(model_version, current)
    rules = tuple(_rule(name, threshold, evidence, config) for name, threshold in config.up_rules(current).items())
    floor_value = config.floor(current)
    floor = None
    if floor_value is not None:
        reviewed = evidence.reviewed if evidence else 0
        observed = evidence.agreement if evidence else None
        judged = reviewed >= config.floor_min_reviewed
        floor = RuleCheck("floor", observed, floor_value, met=not judged or (observed is not None and observed >= floor_value),
                          detail="" if judged else f"not judged: {reviewed} reviews (< {config.floor_min_reviewed})")
    suggestions = []
    if (current == "partial" and evidence is not None and evidence.band_reviewed >= config.band_narrowing_min_cases
            and evidence.band_agreement is not None and evidence.band_agreement >= config.band_narrowing_agreement):
        suggestions.append(f"people agreed with the model on {evidence.band_agreement:.1%} of the {evidence.band_reviewed} "
                           f"referred cases (>= {config.band_narrowing_agreement:.0%}): narrow the band of partial")
    move_down = floor is not None and not floor.met
    return ReadinessVerdict(
        model_name=agreement.model_name, model_version=model_version, current=current, next=following,
        meets=bool(rules) and all(rule.met for rule in rules) and not move_down, rules=rules,
        move_down=move_down, move_down_to=previous_degree(current) if move_down else None, floor=floor,
        suggestions=tuple(suggestions), evidence=evidence)


def _rule(name: str, threshold: float, evidence: GroupAgreement | None, config: AutomationConfig) -> RuleCheck:
    if evidence is None:
        return RuleCheck(name, None, threshold, False, "no served or reviewed cases in this degree")
    if name == "min_reviewed":
        return RuleCheck(name, evidence.reviewed, threshold, evidence.reviewed >= threshold, "")
    if name == "min_agreement":
        return _at_least(name, evidence.agreement, threshold, "")
    if name == "min_slice_agreement":
        worst = evidence.worst_slice(config.min_slice_cases)
        if worst is None:
            return RuleCheck(name, None, threshold, False, f"no slice has {config.min_slice_cases} reviewed cases yet")
        return _at_least(name, worst.agreement, threshold,
                         f"worst slice {worst.feature}={worst.value} ({worst.agreed}/{worst.reviewed})")
    if name == "max_override_rate":
        return _at_most(name, evidence.override_rate, threshold, "")
    if name == "max_referral_rate":
        return _at_most(name, evidence.referral_rate, threshold, f"{evidence.referred} of {evidence.served} referred")
    raise DataError(f"unknown readiness rule {name!r}")


def _at_least(name: str, observed: float | None, threshold: float, detail: str) -> RuleCheck:
    return RuleCheck(name, observed, threshold, observed is not None and observed >= threshold, detail)


def _at_most(name: str, observed: float | None, threshold: float, detail: str) -> RuleCheck:
    return RuleCheck(name, observed, threshold, observed is not None and observed <= threshold, detail)
