"""Reading ``/metrics`` the way Prometheus does (prometheus-client's own parser)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape"]


class Scrape:
    """One scrape's samples; ``scrape["relay_events_accepted_total", {"type": "lead"}]``
    sums the samples of that name whose labels include those given (0 when none)."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: list[tuple[str, dict[str, str], float]] = []
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            self.samples += [(s.name, s.labels, s.value) for s in family.samples]

    def __getitem__(self, key: str | tuple[str, dict[str, str]]) -> float:
        name, labels = (key, {}) if isinstance(key, str) else key
        return sum(
            value
            for sample, have, value in self.samples
            if sample == name and labels.items() <= have.items()
        )

    def labels(self, name: str, label: str) -> set[str]:
        """Every value ``label`` takes in the samples named ``name``."""
        return {have[label] for sample, have, _ in self.samples if sample == name}

    def moved(self, before: Scrape, key: str | tuple[str, dict[str, str]]) -> float:
        """How much a counter grew since ``before``."""
        return self[key] - before[key]
