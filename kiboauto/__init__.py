"""kiboauto: onboard experiment automation for protein-crystal and cell-culture payloads."""

from __future__ import annotations

__version__ = "0.1.0"
