"""The defence acceptance policy (tests/data/acceptance-policy.toml), a template filled per run."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = Path(__file__).parent / "data" / "acceptance-policy.toml"
PLACEHOLDERS = ("@KEYDIR@", "@WEBHOOK_URL@")


def acceptance_policy(keydir: Path, webhook_url: str) -> str:
    """The policy text with its key and hook under ``keydir`` and its webhook at ``webhook_url``."""
    text = TEMPLATE.read_text()
    assert all(p in text for p in PLACEHOLDERS), "the template lost a placeholder"
    filled = text.replace("@KEYDIR@", str(keydir)).replace("@WEBHOOK_URL@", webhook_url)
    assert "@" not in filled.replace(webhook_url, "").replace(str(keydir), ""), filled
    return filled
