"""The ``voucherify-relay`` command: subcommands and exit codes, no business logic.

Exit codes: 0 success; 1 a runtime failure (API, database); 2 bad usage;
78 (EX_CONFIG) invalid configuration, with one line naming the variable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from daemon import __version__
from daemon.errors import ConfigError, RelayError
from daemon.logs import configure_logging
from daemon.settings import RelaySettings, load_settings

if TYPE_CHECKING:
    from daemon.store import OutboxRow

EX_CONFIG = 78


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line."""
    parser = argparse.ArgumentParser(prog="voucherify-relay", description="Push notifications for Voucherify async actions.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help="run the relay in the foreground (the daemon)")
    commands.add_parser("check", help="validate the configuration and make one cheap API call")
    send_test = commands.add_parser("send-test", help="send a clearly marked sample event through every sink (or one) and report the answers")
    send_test.add_argument("--sink", default=None, help="only this sink (its name: webhook, slack, or a RELAY_SINKS__<NAME>)")
    demo = commands.add_parser("demo", help="watch events flow: a built-in Voucherify stand-in, a local receiver and the relay")
    demo.add_argument("--seconds", type=float, default=None, help="stop after this long (default: when the show is over)")
    demo.add_argument("--slack", action="store_true", help="also print each event's Slack message as Block Kit JSON")
    move = commands.add_parser(
        "migrate-state", help="copy a SQLite state file into an empty PostgreSQL database (baseline, actions, pending and dead deliveries)"
    )
    move.add_argument("--from", dest="source", required=True, metavar="sqlite:///PATH", help="the SQLite state file (stop the relay first)")
    move.add_argument("--to", dest="target", required=True, metavar="postgresql://...", help="an empty PostgreSQL database; its tables are created")
    outbox = commands.add_parser("outbox", help="inspect and replay deliveries").add_subparsers(dest="outbox_command", required=True, metavar="ACTION")
    listing = outbox.add_parser("list", help="list pending deliveries (or dead letters with --dead)")
    listing.add_argument("--dead", action="store_true", help="list the dead-letter list instead")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.add_argument("--limit", type=int, default=100)
    listing.add_argument("--project", help="only this Voucherify project's rows")
    replay = outbox.add_parser("replay", help="make deliveries due again (same event id)")
    target = replay.add_mutually_exclusive_group(required=True)
    target.add_argument("row_id", nargs="?", type=int, help="the outbox row id (from `outbox list`)")
    target.add_argument("--dead", action="store_true", help="replay every dead letter")
    replay.add_argument("--project", help="only this Voucherify project's rows (with --dead: its dead letters only)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"voucherify-relay: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    except RelayError as exc:
        print(f"voucherify-relay: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run()
    if args.command == "check":
        return _check()
    if args.command == "send-test":
        from daemon.sendtest import send_test  # noqa: PLC0415

        return asyncio.run(send_test(_settings(require_api=False), only=args.sink))
    if args.command == "demo":
        from daemon.demo.run import run_demo  # noqa: PLC0415 - the stand-in is only loaded for the demo

        return asyncio.run(run_demo(seconds=args.seconds, slack_json=args.slack))
    if args.command == "migrate-state":
        return _migrate_state(source=args.source, target=args.target)
    return _outbox(args)


def _outbox(args: argparse.Namespace) -> int:
    if args.outbox_command == "list":
        return _outbox_list(dead=args.dead, as_json=args.json, limit=args.limit, project=args.project)
    return _outbox_replay(row_id=args.row_id, dead=args.dead, project=args.project)


def _settings(*, require_api: bool = True, require_sink: bool = True) -> RelaySettings:
    settings = load_settings(require_api=require_api, require_sink=require_sink)
    configure_logging(level=settings.log_level, fmt=settings.log_format, secrets=settings.secret_values())
    return settings


def _run() -> int:
    from daemon.lifecycle import run_relay  # noqa: PLC0415

    asyncio.run(run_relay(_settings()))
    return 0


def _check() -> int:
    from daemon.check import run_check  # noqa: PLC0415

    return asyncio.run(run_check(_settings(require_sink=False)))


def _outbox_list(*, dead: bool, as_json: bool, limit: int, project: str | None) -> int:
    rows = asyncio.run(_read_outbox(dead=dead, limit=limit, project=project))
    if as_json:
        for row in rows:
            print(json.dumps(_row_dict(row)))
        return 0
    if not rows:
        print("no dead letters" if dead else "no pending deliveries")
        return 0
    print(f"{'ROW':>6}  {'PROJECT':<10} {'SINK':<12} {'EVENT':<22} {'ACTION':<22} {'TRIES':>5}  {'NEXT ATTEMPT':<20} LAST ERROR")
    for row in rows:
        nxt = _when(row.next_attempt_at) if row.next_attempt_at else "-"
        where = f"{row.project:<10} {row.sink:<12} {row.event_type:<22} {row.action_id:<22}"
        print(f"{row.row_id:>6}  {where} {row.attempts:>5}  {nxt:<20} {row.last_error or ''}")
    return 0


def _row_dict(row: object) -> dict[str, object]:
    return {name: getattr(row, name) for name in row.__slots__}  # type: ignore[attr-defined]


def _outbox_replay(*, row_id: int | None, dead: bool, project: str | None) -> int:
    count = asyncio.run(_replay_outbox(None if dead else row_id, project=project))
    if count == 0:
        scope = "" if project is None else f" of project {project}"
        print(f"nothing to replay{scope}" if dead else f"no outbox row {row_id}{scope}", file=sys.stderr)
        return 0 if dead else 1
    print(f"{count} deliver{'y' if count == 1 else 'ies'} due again; a running relay sends {'it' if count == 1 else 'them'} within a second")
    return 0


async def _read_outbox(*, dead: bool, limit: int, project: str | None) -> list[OutboxRow]:
    from daemon.bootstrap import open_stores  # noqa: PLC0415

    stores = await open_stores(_settings(require_api=False, require_sink=False), mode="ro")
    try:
        return await stores.outbox.list(dead=dead, limit=limit, project=project)
    finally:
        await stores.close()


async def _replay_outbox(row_id: int | None, *, project: str | None) -> int:
    from daemon.bootstrap import open_stores  # noqa: PLC0415

    stores = await open_stores(_settings(require_api=False, require_sink=False), mode="rw")
    try:
        return await stores.outbox.replay(row_id, now=time.time(), project=project)
    finally:
        await stores.close()


def _migrate_state(*, source: str, target: str) -> int:
    from daemon.migrate_state import migrate_state  # noqa: PLC0415 - loads the PostgreSQL driver

    report = asyncio.run(migrate_state(source=source, target=target))
    print(
        f"copied {report.actions} actions ({report.in_flight} in flight), {report.pending} pending and {report.dead} dead deliveries, "
        f"{report.meta} meta values (baseline, cursor) and {report.api_calls} API call times from the last hour"
    )
    print("now point RELAY_STATE_URL at the PostgreSQL database and start the relay")
    return 0


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
