"""The audit log: every alias move, promotion, rollback and verdict, with time, actor and reason.

MLflow keeps no history of alias moves, so the log is written into the registry itself, as tags
on the registered model: ``shadowserve.audit.<time in ns>.<random>`` holding one JSON entry.
Tags live in the registry's database, so the log travels with the registry (a backup, a
migration to ``mlflow server``), two writers never overwrite each other, and any MLflow client
can read it.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

PREFIX = "shadowserve.audit."
MAX_REASON = 2000  # characters kept of a reason
MAX_ENTRY_BYTES = 64 * 1024  # below MLflow's 100,000-character tag value limit


def default_actor() -> str:
    """Who acts: ``$SHADOWSERVE_ACTOR`` (a CI job sets it), else ``user@host``."""
    actor = os.environ.get("SHADOWSERVE_ACTOR", "").strip()
    if actor:
        return actor[:200]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry: a container running as an arbitrary uid
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AuditEntry:
    time: float
    actor: str
    action: str  # register, alias, promote, rollback, ramp, ready, set, verdict, refused
    version: int | None = None
    alias: str | None = None
    previous: int | None = None  # the version the alias held before, for alias moves
    reason: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def now(cls, action: str, *, actor: str | None = None, **fields: Any) -> AuditEntry:
        return cls(time.time(), actor or default_actor(), action, **fields)

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "actor": self.actor, "action": self.action, "version": self.version,
                "alias": self.alias, "previous": self.previous, "reason": self.reason[:MAX_REASON],
                "details": dict(self.details)}

    def encode(self) -> tuple[str, str]:
        """The tag (key, value) that stores the entry."""
        key = f"{PREFIX}{int(self.time * 1e9):020d}.{secrets.token_hex(4)}"
        value = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), default=str)
        if len(value) > MAX_ENTRY_BYTES:
            value = json.dumps({**self.to_json(), "details": {"truncated": True}}, sort_keys=True,
                               separators=(",", ":"))
        return key, value

    def line(self) -> str:
        """One line of ``shadowserve-registry history``."""
        when = datetime.fromtimestamp(self.time, timezone.utc).isoformat(timespec="seconds")
        what = self.action
        if self.alias is not None:
            moved = f"{self.previous} -> " if self.previous is not None else ""
            what += f" @{self.alias} {moved}{self.version}"
        elif self.version is not None:
            what += f" version {self.version}"
        return f"{when}  {self.actor}  {what}" + (f": {self.reason}" if self.reason else "")


def decode(key: str, value: str) -> AuditEntry | None:
    """The entry a tag holds; None for other tags and for values that are not entries."""
    if not key.startswith(PREFIX):
        return None
    try:
        data = json.loads(value)
        return AuditEntry(float(data["time"]), str(data["actor"]), str(data["action"]),
                          _int(data.get("version")), data.get("alias"), _int(data.get("previous")),
                          str(data.get("reason") or ""), dict(data.get("details") or {}))
    except (ValueError, KeyError, TypeError):
        return None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def entries(tags: Mapping[str, str]) -> list[AuditEntry]:
    """The audit log held in a registered model's tags, oldest first."""
    found = [(key, entry) for key, value in tags.items() if (entry := decode(key, value)) is not None]
    return [entry for _, entry in sorted(found, key=lambda item: (item[1].time, item[0]))]
