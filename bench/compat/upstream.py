"""Failures whose cause is in transformers or PEFT, not in our code: each rule matches a
failing cell and says so in it, with the upstream issue where one is known. Rules are
checked in order; the first that matches names the cause."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    feature: str  # the column ("*": any)
    detail: str  # regex searched in the cell's error text
    note: str  # what the cell says: whose bug, and the issue if known
    methods: str = ".*"  # regex over method names
    architectures: str = ".*"  # regex over architecture names


RULES: tuple[Upstream, ...] = ()


def upstream_note(method: str, architecture: str, feature: str, detail: str) -> str | None:
    for rule in RULES:
        if (rule.feature in ("*", feature) and re.fullmatch(rule.methods, method)
                and re.fullmatch(rule.architectures, architecture) and re.search(rule.detail, detail)):
            return rule.note
    return None
