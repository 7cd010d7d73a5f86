"""The policy's actions, as the defence's audit trail recorded them, for the period's statement.

Read-only: attesting never creates or changes the defence's tables. Like events, actions are the
VM's word; they tell the auditor what the owner's policy did, not where the VM was.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

FIELDS = ("ts", "event_id", "verdict", "action", "status", "detail")


def actions_since(store_path: Path, since: float) -> list[dict[str, Any]]:
    """Audit records at or after ``since`` (UNIX s), oldest first; none without a store."""
    from geoprobe.defend.audit import AuditStore

    try:
        store = AuditStore.open_readonly(store_path)
    except sqlite3.Error:
        return []
    if store is None:
        return []
    try:
        return [
            {k: r.get(k) for k in FIELDS}
            for r in store.trail()
            if isinstance(r.get("ts"), (int, float)) and r["ts"] >= since
        ]
    except sqlite3.Error:
        return []
    finally:
        store.close()
