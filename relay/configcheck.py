"""``relay config check``'s Convertr findings, shared by the command and the console.

For each Convertr destination the campaign form's fields are read from Convertr and
compared with the destination's mapping (:func:`relay.adapters.convertr.check_mapping`).
"""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from relay.adapters.convertr import ConvertrAdapter, check_mapping
from relay.errors import ConfigError
from relay.settings import ConvertrDestination, Settings

__all__ = ["Finding", "check_convertr_forms"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the check about one destination: a problem, or that all is well."""

    destination: str
    ok: bool
    text: str


async def check_convertr_forms(settings: Settings) -> list[Finding]:
    """Read each Convertr destination's form fields and report mapping mismatches (or
    one ``ok`` finding per destination whose form has every mapped field)."""
    findings: list[Finding] = []
    convertr = {
        n: d for n, d in settings.destinations.items() if isinstance(d, ConvertrDestination)
    }
    if not convertr:
        return findings
    async with aiohttp.ClientSession() as session:
        for name, dest in convertr.items():
            adapter = ConvertrAdapter(name, dest, session)
            try:
                fields = await adapter.form_fields()
            except ConfigError as exc:
                findings.append(
                    Finding(name, False, f"cannot read the campaign form's fields: {exc}")
                )
                continue
            found = check_mapping(dest.fields, fields)
            findings += [Finding(name, False, p) for p in found]
            if not found:
                findings.append(
                    Finding(
                        name,
                        True,
                        f"form {dest.form_id} has every mapped field ({len(fields)} fields)",
                    )
                )
    return findings
