"""The stand-in's async actions: created, updated and finished like Voucherify's, kept in memory."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from daemon.demo.wire import MS, Json, documented_example, load_examples, new_request_id, parse_end_date, serialize, to_utc_ms


class ActionBook:
    """Async actions by id, with created_at strictly increasing so paging by end_date works."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        """Start empty; the clock stamps created_at and updated_at."""
        self._clock = clock or (lambda: datetime.now(UTC))
        self.actions: dict[str, Json] = {}
        self._created: dict[str, datetime] = {}
        self._last_auto: datetime | None = None

    def add_action(
        self,
        type: str = "CUSTOMERS.IMPORT_CSV",  # noqa: A002 - Voucherify's field name
        *,
        status: str = "ENQUEUED",
        created_at: datetime | None = None,
        result: Json | None = None,
        operation_status: str | None = None,
        progress: int = 0,
        id: str | None = None,  # noqa: A002 - Voucherify's field name
        **extra: object,
    ) -> str:
        """Add an action and return its id; created_at defaults to a strictly increasing now."""
        created = to_utc_ms(created_at) if created_at is not None else self._next_created_at()
        fields: Json = {
            "id": id or self._new_id(),
            "type": type,
            "status": status,
            "operation_status": operation_status,
            "result": result,
            "created_at": created,
            "updated_at": created,
            "request_id": new_request_id(),
            "progress": progress,
            "object": "async_action",
            **extra,
        }
        return self._insert(fields)

    def update_action(self, action_id: str, **fields: object) -> None:
        """Change fields of an action (None removes one) and set updated_at to now."""
        self._store(action_id, {**self._existing(action_id), "updated_at": self._now(), **fields})

    def complete_action(
        self,
        action_id: str,
        *,
        status: str = "DONE",
        result: Json | None = None,
        operation_status: str | None = None,
        example: str | None = None,
    ) -> None:
        """Finish an action: terminal status, progress 100, processing_time and result."""
        created, now = self._created[self._existing(action_id)["id"]], self._now()
        fields: Json = {
            "status": status,
            "progress": 100,
            "updated_at": now,
            "processing_time": max(0, (now - created) // MS),
        }
        documented = documented_example(example) if example else {}
        fields |= {k: documented[k] for k in ("result", "operation_status") if k in documented}
        explicit = {"result": result, "operation_status": operation_status}
        fields |= {k: v for k, v in explicit.items() if v is not None}
        self.update_action(action_id, **fields)

    def remove_action(self, action_id: str) -> None:
        """Forget an action: GET answers 404 and the list omits it."""
        self._existing(action_id)
        del self.actions[action_id], self._created[action_id]

    def add_example_actions(self) -> list[str]:
        """Add one action per documented GET example, with fresh ids and created_at."""
        ids = []
        for body in load_examples().values():
            created = self._next_created_at()
            updated = created + body.get("processing_time", 0) * MS
            fields = copy.deepcopy(body) | {
                "id": self._new_id(),
                "request_id": new_request_id(),
                "created_at": created,
                "updated_at": updated,
            }
            ids.append(self._insert(fields))
        return ids

    def _now(self) -> datetime:
        return to_utc_ms(self._clock())

    def _next_created_at(self) -> datetime:
        now = self._now()
        if self._last_auto is not None and now <= self._last_auto:
            now = self._last_auto + MS  # paging by exclusive end_date needs distinct created_at
        self._last_auto = now
        return now

    def _new_id(self) -> str:
        while (action_id := "aa_" + secrets.token_hex(9)) in self.actions:
            pass
        return action_id

    def _existing(self, action_id: str) -> Json:
        if action_id not in self.actions:
            msg = f"no async action {action_id!r}"
            raise KeyError(msg)
        return self.actions[action_id]

    def _insert(self, fields: Json) -> str:
        if fields["id"] in self.actions:
            msg = f"duplicate async action id {fields['id']!r}"
            raise ValueError(msg)
        self._store(fields["id"], fields)
        return str(fields["id"])

    def _store(self, action_id: str, fields: Json) -> None:
        action = serialize(fields | {"id": action_id})
        self.actions[action_id] = action
        self._created[action_id] = parse_end_date(action["created_at"])
