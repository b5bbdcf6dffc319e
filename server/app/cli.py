"""The ``igsync`` command line (also ``python -m server``), API.md §7.

Commands: ``serve``, ``channel add|list|disconnect|subscribe|status``, ``token create``,
``backfill``, ``simulate``, ``replay``, ``doctor``, ``triggers list-dead|retry``,
``media list-failed|retry``. Store-backed tools use the configured
URLs, else the stores of a running ``igsync serve`` on the same data directory, else start
the embedded stores for the duration of the command. A configuration error is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from config import ConfigError, Settings, describe
from server.api.errors import ApiError
from server.api.signatures import sign
from server.app import devsecrets, lifecycle
from server.ops import logs

EXIT_CONFIG = 2


def _settings() -> Settings:
    return Settings.from_env(os.environ)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _with_core(settings: Settings, work: Callable[[Any], Any]) -> Any:
    """Run ``await work(core)`` against the stores a tool should use."""
    from server.app.core import build_core

    settings = lifecycle.fill_dev_secrets(settings)
    with lifecycle.stores_for_tool(settings) as resolved:

        async def main() -> Any:
            core = await build_core(resolved)
            try:
                return await work(core)
            finally:
                await core.close()

        return asyncio.run(main())


# -- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    """``igsync serve``: run the server until SIGTERM/SIGINT."""
    settings = _settings()
    if args.port is not None:
        settings = settings.replace(port=args.port)
    if args.host is not None:
        settings = settings.replace(host=args.host)
    return lifecycle.serve(settings, workers=args.workers)


def cmd_channel_add(args: argparse.Namespace) -> int:
    """``igsync channel add``: connect or reconnect an account."""
    owner_id: Any = int(args.owner_id) if args.owner_id.isdigit() else args.owner_id
    payload = {"page_id": args.page_id, "username": args.username, "owner": {"id": owner_id, "email": args.owner_email}}
    if args.instagram_user_id:
        payload["instagram_user_id"] = args.instagram_user_id
    if args.access_token_env:
        payload["access_token"] = os.environ.get(args.access_token_env, "")
    if args.login:
        payload["login"] = args.login
    if args.token_expires_in:
        payload["token_expires_in"] = args.token_expires_in

    async def work(core: Any) -> Any:
        return await core.accounts.connect_channel(payload, subscribe_now=True)

    status, body = _with_core(_settings(), work)
    _print_json({"created": status == 201, **body})
    return 0


def cmd_channel_list(args: argparse.Namespace) -> int:
    """``igsync channel list``."""
    from models import serializers

    async def work(core: Any) -> Any:
        return [serializers.channel(c) for c in await core.store.channels.list()]

    _print_json({"channels": _with_core(_settings(), work)})
    return 0


def cmd_channel_disconnect(args: argparse.Namespace) -> int:
    """``igsync channel disconnect``."""

    async def work(core: Any) -> Any:
        return await core.inbox.disconnect_channel(args.channel_id)

    _print_json(_with_core(_settings(), work))
    return 0


def cmd_channel_subscribe(args: argparse.Namespace) -> int:
    """``igsync channel subscribe``: subscribe the account to igsync's webhook fields."""

    async def work(core: Any) -> Any:
        return await core.accounts.subscription_of(args.channel_id, subscribe=True)

    answer = _with_core(_settings(), work)
    _print_json(answer)
    return 0 if answer["subscription"]["state"] == "subscribed" else 1


def cmd_channel_status(args: argparse.Namespace) -> int:
    """``igsync channel status``: token, subscription (read from Meta now), last webhook, history."""
    from models import serializers
    from models.timeutil import iso

    async def work(core: Any) -> Any:
        subscription = await core.accounts.subscription_of(args.channel_id)
        channel = await core.accounts.channel(args.channel_id)
        history = await core.accounts.history_of(args.channel_id)
        return {
            "channel": serializers.channel(channel),
            "last_webhook_at": iso(channel.get("last_webhook_at")),
            "subscription": subscription["subscription"],
            "history": history["runs"],
        }

    _print_json(_with_core(_settings(), work))
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """``igsync backfill``: import a channel's history from the Conversations API, with progress."""
    from models.timeutil import parse_iso

    since = parse_iso(args.since) if args.since else None

    async def work(core: Any) -> Any:
        channel = await core.accounts.channel(args.channel)
        if args.dry_run:
            return await core.history.importer.dry_run(channel, since, lambda row: _print_line(row))
        run = await core.accounts.queue_backfill(channel, since)
        done = await core.history.run_here(run["_id"], _progress_line)
        return done if done is not None else {"note": "another process is running this import", "run": run["_id"]}

    result = _with_core(_settings(), work)
    if args.dry_run:
        _print_line({"total": result})  # after one line per conversation: one line in all
    else:
        _print_json(result)
    return 0 if result.get("state") in (None, "done") else 1


def _print_line(row: dict[str, Any]) -> None:
    print(json.dumps(row), flush=True)


async def _progress_line(progress: dict[str, Any]) -> None:
    conversations, messages = progress["conversations"], progress["messages"]
    eta = f"{progress['eta_secs']:.0f} s" if progress.get("eta_secs") is not None else "-"
    print(
        f"{progress['state']}: conversations {conversations['done']}/{conversations['total']}, "
        f"stored {messages['stored']}, already stored {messages['duplicate']}, "
        f"not detailed by Meta {messages['not_detailed']}, {progress['messages_per_sec']:.1f} msg/s, ETA {eta}",
        file=sys.stderr,
        flush=True,
    )


def cmd_token_create(args: argparse.Namespace) -> int:
    """``igsync token create``: issue an inbox token."""
    payload: dict[str, Any] = {}
    if args.owner_email:
        payload["owner_email"] = args.owner_email
    if args.owner_id:
        payload["owner_id"] = int(args.owner_id) if args.owner_id.isdigit() else args.owner_id

    async def work(core: Any) -> Any:
        return await core.inbox.create_token(payload)

    result = _with_core(_settings(), work)
    _print_json(result)
    print("The token is shown once; only its hash is stored.", file=sys.stderr)
    return 0


def server_url(settings: Settings, override: str | None = None) -> str:
    """The running server's base URL: given, or the configured listen address (a wildcard
    listen address is reached on loopback)."""
    if override:
        return override.rstrip("/")
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "", "::") else settings.host
    return f"http://{host}:{settings.port}"


def cmd_simulate(args: argparse.Namespace) -> int:
    """``igsync simulate``: sign and post webhook fixtures to a running server."""
    import requests

    settings = _settings()
    secret = args.app_secret or settings.app_secret
    if not secret and not settings.production:
        secret = devsecrets.load_or_create(settings.data_dir)["app_secret"]
    if not secret:
        raise ConfigError("no app secret: set IGSYNC_APP_SECRET or pass --app-secret")
    url = server_url(settings, args.url) + "/webhooks/instagram"
    failed = 0
    for name in args.files:
        body = Path(name).read_bytes()
        try:
            response = requests.post(
                url,
                data=body,
                headers={"Content-Type": "application/json", "X-Hub-Signature-256": sign(body, secret)},
                timeout=30,
            )
        except requests.RequestException as exc:
            print(f"{name}: could not reach {url}: {type(exc).__name__}", file=sys.stderr)
            return 1
        print(f"{name}: HTTP {response.status_code}")
        try:
            _print_json(response.json())
        except ValueError:
            print(response.text)
        failed += response.status_code >= 400
    return 1 if failed else 0


def cmd_replay(args: argparse.Namespace) -> int:
    """``igsync replay``: process the kept webhook bodies again (idempotent)."""
    from models.timeutil import parse_iso

    since = parse_iso(args.since) if args.since else None

    async def work(core: Any) -> Any:
        counts = {"bodies": 0, "items": 0, "stored": 0, "duplicates": 0, "other": 0, "failed": 0}
        async for event in core.store.webhook_events.iterate(since=since, account_id=args.account):
            counts["bodies"] += 1
            body = bytes(event["body"])
            response = await core.pipeline.process_body(body, received_at=event["received_at"].timestamp(), audit=False)
            if response.status != 200:
                counts["failed"] += 1
                continue
            results = response.body.get("results", [response.body])
            for result in results:
                counts["items"] += 1
                if result.get("duplicate"):
                    counts["duplicates"] += 1
                elif result.get("status") == "success" and "data" in result:
                    counts["stored"] += 1
                else:
                    counts["other"] += 1
        return counts

    counts = _with_core(_settings(), work)
    _print_json(counts)
    return 1 if counts["failed"] else 0


def _show(work: Callable[[Any], Awaitable[Any]]) -> int:
    _print_json(_with_core(_settings(), work))
    return 0


def _requeue(
    ids: list[str], every: bool, noun: str, requeue: Callable[[Any, list[str] | None], Awaitable[Any]], refused: str
) -> int:
    """``retry ID…`` or ``retry --all``: exactly one of the two; exit 1 when an id was unknown
    or not in a state to retry (``refused``: the result's list of those)."""
    if every == bool(ids):
        print(f"igsync: give either --all or one or more {noun} ids", file=sys.stderr)
        return EXIT_CONFIG
    result = _with_core(_settings(), lambda core: requeue(core, None if every else ids))
    _print_json(result)
    # A running server takes the requeued jobs at its next poll.
    return 1 if result["not_found"] or result[refused] else 0


def cmd_triggers_list_dead(args: argparse.Namespace) -> int:
    """``igsync triggers list-dead``."""
    return _show(
        lambda core: core.triggers.list_dead(limit=str(args.limit), cursor=args.cursor, channel_id=args.channel_id)
    )


def cmd_triggers_retry(args: argparse.Namespace) -> int:
    """``igsync triggers retry``."""
    return _requeue(
        args.delivery_ids,
        args.all,
        "delivery",
        lambda core, ids: core.triggers.retry(ids, channel_id=args.channel_id),
        "not_dead",
    )


def cmd_media_list_failed(args: argparse.Namespace) -> int:
    """``igsync media list-failed``."""

    async def listed(core: Any) -> Any:
        return {"jobs": await core.media.list_failed(limit=args.limit, reason=args.reason)}

    return _show(listed)


def cmd_media_retry(args: argparse.Namespace) -> int:
    """``igsync media retry``."""
    return _requeue(
        args.job_ids, args.all, "job", lambda core, ids: core.media.retry_failed(ids, reason=args.reason), "not_failed"
    )


def cmd_doctor(args: argparse.Namespace) -> int:
    """``igsync doctor``: check everything, say what to fix; exit 1 on a failure."""
    from server.app import doctor

    # Missing or weak secrets are one of the things the doctor reports, not a reason to stop.
    settings = lifecycle.fill_dev_secrets(Settings.from_env(os.environ, require_secrets=False))
    target = None if args.no_server else server_url(settings, args.url)
    # The report is the output; the pipeline's per-item INFO lines for the test webhook are noise here.
    logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
    with lifecycle.stores_for_tool(settings) as resolved:
        checkup = doctor.Doctor(
            resolved, server_url=target, timeout_secs=args.timeout, embedded=not settings.production
        )
        results = asyncio.run(checkup.run())
    print(doctor.render_json(results) if args.json else doctor.render_text(results))
    return doctor.exit_code(results)


def cmd_config(args: argparse.Namespace) -> int:
    """``igsync config``: every setting with its default."""
    for name, default, help_text in describe():
        print(f"{name:32} {default or '-':28} {help_text}")
    return 0


def cmd_mongo_shard_plan(args: argparse.Namespace) -> int:
    """``igsync mongo shard-plan``: the commands that shard igsync's collections (for mongosh,
    or ``--json`` for the admin database), with why each collection is or is not sharded."""
    from models.sharding import SHARD_PLAN, NotSharded, shard_commands

    database = _settings().mongo_db
    commands = shard_commands(database)
    if args.json:
        _print_json(commands)
        return 0
    print(f"// igsync's shard plan for database {database!r}: run in mongosh connected to a mongos,")
    print("// after igsync has created its indexes once (igsync serve or igsync doctor).")
    print(f"sh.enableSharding({json.dumps(database)})")
    for command in commands[1:]:
        name = command["shardCollection"].split(".", 1)[1]
        key = ", ".join(f"{field}: {json.dumps(kind)}" for field, kind in command["key"].items())
        print(f"sh.shardCollection({json.dumps(command['shardCollection'])}, {{ {key} }})  // {SHARD_PLAN[name].why}")
    print("// Not sharded:")
    for name, plan in SHARD_PLAN.items():
        if isinstance(plan, NotSharded):
            print(f"//   {name}: {plan.why}")
    return 0


# -- parser -----------------------------------------------------------------------------


def _workers(value: str) -> int:
    from server.app.workers import worker_count

    try:
        return worker_count(value)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number of at least 1, or auto") from None


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser("serve", help="run the server (embedded stores when no URLs are set)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="pre-forked processes sharing the port (auto: one per core; default 1)",
    )
    serve.set_defaults(func=cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    """Every ``igsync`` command and its options."""
    parser = argparse.ArgumentParser(prog="igsync", description="Instagram Direct inbox sync server.")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_serve(sub)

    channel = sub.add_parser("channel", help="connect, list and disconnect channels")
    channel_sub = channel.add_subparsers(dest="channel_command", required=True)
    add = channel_sub.add_parser("add", help="connect (or reconnect) an Instagram account")
    add.add_argument("--page-id", required=True)
    add.add_argument("--username", required=True)
    add.add_argument("--owner-id", required=True)
    add.add_argument("--owner-email", required=True)
    add.add_argument("--instagram-user-id")
    add.add_argument(
        "--access-token-env",
        metavar="VAR",
        help="name of an environment variable holding the access token (never pass it as an argument)",
    )
    add.add_argument("--login", choices=["instagram_login", "facebook_login"], help="how the account was connected")
    add.add_argument("--token-expires-in", type=int, metavar="SECS", help="Meta's expires_in of the token")
    add.set_defaults(func=cmd_channel_add)
    subscribe = channel_sub.add_parser("subscribe", help="subscribe the account to the webhook fields igsync handles")
    subscribe.add_argument("channel_id")
    subscribe.set_defaults(func=cmd_channel_subscribe)
    status = channel_sub.add_parser("status", help="token, subscription (asked of Meta now), last webhook, history")
    status.add_argument("channel_id")
    status.set_defaults(func=cmd_channel_status)
    lst = channel_sub.add_parser("list", help="list every channel")
    lst.set_defaults(func=cmd_channel_list)
    disc = channel_sub.add_parser("disconnect", help="disconnect a channel (its data is kept)")
    disc.add_argument("channel_id")
    disc.set_defaults(func=cmd_channel_disconnect)

    token = sub.add_parser("token", help="inbox tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser("create", help="issue an inbox token for an owner")
    group = create.add_mutually_exclusive_group(required=True)
    group.add_argument("--owner-email")
    group.add_argument("--owner-id")
    create.set_defaults(func=cmd_token_create)

    simulate = sub.add_parser("simulate", help="sign and POST webhook bodies to a running server")
    simulate.add_argument("--url", help="server base URL (default http://IGSYNC_HOST:IGSYNC_PORT)")
    simulate.add_argument("--app-secret", help="signing secret (default: configured or dev secret)")
    simulate.add_argument("files", nargs="+", metavar="FIXTURE")
    simulate.set_defaults(func=cmd_simulate)

    backfill = sub.add_parser("backfill", help="import a channel's history from the Conversations API")
    backfill.add_argument("--channel", required=True, help="our channel id")
    backfill.add_argument("--since", help="RFC 3339 time: only conversations and messages since then")
    backfill.add_argument("--dry-run", action="store_true", help="print what would be stored; store nothing")
    backfill.set_defaults(func=cmd_backfill)

    replay = sub.add_parser("replay", help="re-process stored webhook bodies (idempotent)")
    replay.add_argument("--since", help="ISO-8601 time; default: everything kept")
    replay.add_argument("--account", help="only bodies for this account id (entry.id)")
    replay.set_defaults(func=cmd_replay)

    _add_queue_commands(sub)

    doctor = sub.add_parser("doctor", help="check stores, indexes, channels, secrets and the pipeline; say what to fix")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON (for scripts)")
    doctor.add_argument("--url", help="the running server's base URL (default http://IGSYNC_HOST:IGSYNC_PORT)")
    doctor.add_argument("--no-server", action="store_true", help="skip the checks of the running server over HTTP")
    doctor.add_argument("--timeout", type=float, default=5.0, help="seconds each check may take (default 5)")
    doctor.set_defaults(func=cmd_doctor)

    config = sub.add_parser("config", help="list every IGSYNC_* setting with its default")
    config.set_defaults(func=cmd_config)
    mongo = sub.add_parser("mongo", help="MongoDB operations").add_subparsers(dest="mongo_command", required=True)
    plan = mongo.add_parser("shard-plan", help="print the commands that shard igsync's collections")
    plan.add_argument("--json", action="store_true", help="the admin commands as JSON")
    plan.set_defaults(func=cmd_mongo_shard_plan)
    return parser


def _add_queue_commands(sub: Any) -> None:
    """``igsync triggers …`` and ``igsync media …``: the operators' view of the two durable queues."""
    trig = sub.add_parser("triggers", help="workflow trigger deliveries: dead letters and retries")
    trig_sub = trig.add_subparsers(dest="triggers_command", required=True)
    list_dead = trig_sub.add_parser("list-dead", help="list dead-lettered deliveries, newest first")
    list_dead.add_argument("--channel-id", help="only this channel's")
    list_dead.add_argument("--limit", type=int, default=50, help="at most this many (1–200)")
    list_dead.add_argument("--cursor", help="next_cursor of the previous page")
    list_dead.set_defaults(func=cmd_triggers_list_dead)
    retry = trig_sub.add_parser("retry", help="deliver dead-lettered deliveries again (fresh attempts)")
    retry.add_argument("--all", action="store_true", help="every dead-lettered delivery (of --channel-id)")
    retry.add_argument("--channel-id", help="only this channel's")
    retry.add_argument("delivery_ids", nargs="*", metavar="ID", help="delivery ids, as listed by list-dead")
    retry.set_defaults(func=cmd_triggers_retry)
    media = sub.add_parser("media", help="media downloads: failed ones and retries")
    media_sub = media.add_subparsers(dest="media_command", required=True)
    failed = media_sub.add_parser("list-failed", help="list failed downloads, most recent first")
    failed.add_argument("--reason", help="only errors starting with this (expired_link, http_, too_large…)")
    failed.add_argument("--limit", type=int, default=50, help="at most this many (1–500)")
    failed.set_defaults(func=cmd_media_list_failed)
    media_retry = media_sub.add_parser("retry", help="download failed files again (expired links are asked anew)")
    media_retry.add_argument("--all", action="store_true", help="every failed download (of --reason, if given)")
    media_retry.add_argument("--reason", help="only errors starting with this")
    media_retry.add_argument("job_ids", nargs="*", metavar="ID", help="job ids, as listed by list-failed")
    media_retry.set_defaults(func=cmd_media_retry)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``igsync`` command line; the process's exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            settings = Settings()
        else:
            settings = Settings.from_env(os.environ, require_secrets=args.command != "doctor")
        logs.configure(settings.log_format, settings.log_level, secrets=logs.secret_values(settings))
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"igsync: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ApiError as exc:
        print(f"igsync: {exc.code}: {exc.message}" + (f" {exc.fields}" if exc.fields else ""), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # an embedded store that cannot start, a store that is down
        from server.app.embedded import EmbeddedError

        if isinstance(exc, EmbeddedError):
            print(f"igsync: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
