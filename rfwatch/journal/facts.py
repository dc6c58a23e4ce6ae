"""The model facts cache: what Roboflow's platform API said about each model (see rfwatch.roboflow.facts)."""

from __future__ import annotations

import json
from typing import Any

from rfwatch.journal.db import Database

__all__ = ["FactsStore"]


class FactsStore:
    def __init__(self, db: Database):
        self.db = db

    def get(self, model: str) -> dict[str, Any] | None:
        doc = self.db.scalar("SELECT facts FROM model_facts WHERE model=?", (model,))
        return json.loads(doc) if doc else None

    def put(self, model: str, facts: dict[str, Any], fetched: float) -> None:
        self.db.transact(
            lambda tx: tx.run(
                "INSERT INTO model_facts (model, facts, fetched) VALUES (?,?,?) ON CONFLICT (model) DO UPDATE"
                " SET facts=excluded.facts, fetched=excluded.fetched",
                (model, json.dumps(facts), fetched),
            )
        )
