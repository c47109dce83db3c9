"""The ``leadrelay`` command."""

from __future__ import annotations

import datetime as dt
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from leadrelay.logging import configure_logging
from leadrelay.settings import get_settings

app = typer.Typer(help="leadrelay: lead intake for real-estate brokerages.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
org_app = typer.Typer(help="Accounts and their organisation.", no_args_is_help=True)
intake_app = typer.Typer(help="Kept intakes.", no_args_is_help=True)
secrets_app = typer.Typer(help="Secrets kept encrypted (LEADRELAY_SECRET_KEY).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(org_app, name="org")
app.add_typer(intake_app, name="intake")
app.add_typer(secrets_app, name="secrets")
webhooks_app = typer.Typer(help="Outbound webhooks (the org files' webhooks).", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")
console = Console()
# The Flower passwords .env.example shows: published, so they protect nothing (tests keep the two equal).
EXAMPLE_FLOWER_PASSWORDS = frozenset({"change-me"})


def _print_version(value: bool) -> None:
    if value:
        # The installed distribution's version, as pyproject.toml gives it (CHANGELOG.md says what changed).
        console.print(f"leadrelay {metadata.version('leadrelay')}", highlight=False)
        raise typer.Exit


@app.callback()
def _setup(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    settings = get_settings()
    configure_logging(fmt=settings.log_format, level=settings.log_level)


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Run the Alembic migrations up to REVISION (head by default)."""
    from models.migrate import upgrade

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.effective_database_url, revision)
    console.print(f"[green]database at {revision}[/green]")


@org_app.command("apply")
def org_apply(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]) -> None:
    """Create or update an account from an org file. Applying the same file twice changes nothing;
    an invalid file is refused whole."""
    from intake.orgfile import load_org_file
    from leadrelay.dev import demo_credentials_in
    from models.org import apply_org
    from models.orgspec import OrgFileError, plain_http_webhooks
    from models.secrets import SecretKeyError, keyring
    from models.uow import UnitOfWork

    settings = get_settings()
    try:
        spec = load_org_file(file)
        if settings.env == "production" and (published := demo_credentials_in(spec)):
            raise OrgFileError(published)
        if not settings.webhooks_allow_private and (plain := plain_http_webhooks(spec)):
            raise OrgFileError(plain)
        keys = keyring(settings)
        with UnitOfWork() as uow:
            report = apply_org(uow.session, spec, keys)
            uow.commit()
    except SecretKeyError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    except OrgFileError as exc:
        console.print(f"[red]{file}: refused, nothing was changed[/red]")
        for error in exc.errors:
            console.print(f"  {error}", markup=False)
        raise typer.Exit(1) from exc
    console.print(f"account {spec.account}: {'changed' if report.changed else 'unchanged'}")
    console.print(report.summary(), markup=False)


@secrets_app.command("rotate")
def secrets_rotate() -> None:
    """Encrypt every stored secret again under the newest key of LEADRELAY_SECRET_KEY (the first). To
    rotate: put the new key first (NEW,OLD), restart, run this, then drop the old key. Running it again
    re-encrypts nothing."""
    from models.org import reencrypt_sms_tokens
    from models.secrets import SecretKeyError, keyring
    from models.uow import UnitOfWork

    try:
        keys = keyring()
    except SecretKeyError as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(2) from exc
    with UnitOfWork() as uow:
        report = reencrypt_sms_tokens(uow.session, keys)
        uow.commit()
    console.print(
        f"re-encrypted {report.reencrypted} value(s) under the newest key; {report.current} already were",
        highlight=False,
    )
    if report.unreadable:
        # Left as they are: dropping the key that opens them would lose them, so the old key must stay.
        console.print(
            f"[red]no key of LEADRELAY_SECRET_KEY opens the SMS auth tokens or webhook secrets of: "
            f"{', '.join(report.unreadable)}; "
            "keep (or put back) the key they were encrypted with, or apply their org files again[/red]",
            highlight=False,
        )
        raise typer.Exit(1)


@app.command("api")
def api(host: str = "127.0.0.1", port: int = 8000, workers: int = 1) -> None:
    """Serve the HTTP API."""
    import uvicorn

    # uvloop's event loop (uvicorn picks it when installed); h11, not httptools, parses HTTP: httptools refuses
    # a method it does not know with a bare 400 before the app sees it, where the app answers 405 problem+json.
    uvicorn.run(
        "intake.api:create_app", factory=True, host=host, port=port, workers=workers, log_config=None, http="h11"
    )


@app.command("worker", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def worker(
    ctx: typer.Context,
    concurrency: int = 2,
    loglevel: str = "INFO",
    no_relay: Annotated[
        bool,
        typer.Option(
            "--no-relay",
            help="do not run the relay's pass in this worker (LEADRELAY_WORKER_RELAY=false does the same); "
            "run `leadrelay relay` apart then",
        ),
    ] = False,
) -> None:
    """A Celery worker (``celery -A workers worker`` works too). Its main process also runs the relay's pass
    every LEADRELAY_RELAY_EVERY_SECONDS, so an API and workers are the whole pipeline. Extra options go to
    Celery."""
    from workers import app as celery_app

    # --quiet: no startup banner (plain text on stdout); the logs say what it said, one record a line.
    argv = ["--quiet", "worker", f"--concurrency={concurrency}", f"--loglevel={loglevel}"]
    if no_relay:
        argv.append("--no-relay")  # the option the relay's bootstep adds to Celery's worker command
    if get_settings().broker_is_embedded:
        # The filesystem transport has no fanout exchange for gossip, mingle and heartbeats.
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    celery_app.worker_main(argv=[*argv, *ctx.args])


@app.command("flower", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def flower(
    ctx: typer.Context,
    port: int = 5555,
    address: str = "127.0.0.1",
    basic_auth: Annotated[
        str | None,
        typer.Option(
            envvar="LEADRELAY_FLOWER_BASIC_AUTH",
            show_envvar=True,
            help="user:password[,user2:password2]; required in production. Prefer the environment variable: "
            "an option shows in the process list",
        ),
    ] = None,
    purge_offline_workers: Annotated[
        int, typer.Option(help="seconds after which an offline worker leaves the view (0: never)")
    ] = 600,
) -> None:
    """Flower for the workers, read-only: it watches workers and tasks, and never revokes a task nor
    stops a worker. Extra options go to Flower."""
    from workers import app as celery_app

    settings = get_settings()
    if settings.broker_is_embedded:
        console.print("[red]Flower needs LEADRELAY_BROKER_URL (Redis): the embedded broker carries no events[/red]")
        raise typer.Exit(2)
    users = [u.strip() for u in basic_auth.split(",")] if basic_auth else []
    if any(not user or not password for user, _, password in (u.partition(":") for u in users)):
        console.print("[red]--basic-auth (LEADRELAY_FLOWER_BASIC_AUTH): user:password[,user2:password2][/red]")
        raise typer.Exit(2)
    if not users and settings.env == "production":
        console.print("[red]Flower in production needs LEADRELAY_FLOWER_BASIC_AUTH (user:password)[/red]")
        raise typer.Exit(2)
    # Refused in every environment: a published password is no protection, and without --basic-auth
    # (allowed outside production) nobody is misled into thinking there is some.
    if any(password in EXAMPLE_FLOWER_PASSWORDS for _, _, password in (u.partition(":") for u in users)):
        console.print(
            "[red]--basic-auth (LEADRELAY_FLOWER_BASIC_AUTH) uses the example password of .env.example: "
            "choose your own (e.g. openssl rand -hex 16)[/red]",
            highlight=False,
        )
        raise typer.Exit(2)
    argv = ["flower", f"--port={port}", f"--address={address}", "--read_only=true"]
    if purge_offline_workers > 0:
        # Worker names change with every container or host restart; the old ones would stay listed offline.
        argv.append(f"--purge_offline_workers={purge_offline_workers}")
    if users:
        argv.append(f"--basic_auth={','.join(users)}")
    # Flower reads the rest from the Celery app: broker URL and transport options (the queue prefix) included.
    code = celery_app.start(argv=[*argv, *ctx.args])
    if code:
        raise typer.Exit(code)


@intake_app.command("replay")
def intake_replay(
    status: Annotated[str, typer.Option(help="rejected or dead")] = "dead",
    since: Annotated[dt.datetime | None, typer.Option(help="only intakes accepted since then (UTC)")] = None,
) -> None:
    """Send kept intakes through the pipeline again (after registering a domain, say: O9)."""
    from models.tables import IntakeStatus
    from models.uow import UnitOfWork
    from workers.relay import send_intake
    from workers.services import reopen_intakes

    if status not in ("rejected", "dead"):
        raise typer.BadParameter("rejected or dead", param_hint="--status")
    with UnitOfWork() as uow:
        rows = reopen_intakes(
            uow, IntakeStatus(status), since.replace(tzinfo=dt.UTC) if since and since.tzinfo is None else since
        )
    for intake_id, source in rows:
        send_intake(intake_id, source)
    console.print(f"replayed {len(rows)} {status} intake(s)")


@webhooks_app.command("secret")
def webhooks_secret() -> None:
    """Print a new signing secret (whsec_ and 32 random bytes in base64) for an org file's webhook."""
    import base64
    import secrets

    typer.echo("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode("ascii"))


@webhooks_app.command("list")
def webhooks_list(account: Annotated[str, typer.Option(help="the account's id")]) -> None:
    """The account's webhooks and their deliveries by status (as GET /v1/webhooks shows them)."""
    from models.uow import UnitOfWork

    with UnitOfWork() as uow:
        row = uow.orgs.account_by_slug(account)
        if row is None:
            raise typer.BadParameter(f"no account {account!r}", param_hint="--account")
        endpoints = uow.webhooks.endpoints(row.id)
        counts = uow.webhooks.counts_by_status([e.id for e in endpoints])
        for e in endpoints:
            state = "disabled (410)" if e.disabled_at else "active" if e.active else "inactive"
            figures = ", ".join(f"{counts.get((e.id, s), 0)} {s}" for s in ("pending", "delivered", "failed"))
            console.print(f"{e.slug}: {e.url} [{state}] {', '.join(e.events)}: {figures}", highlight=False)


@webhooks_app.command("replay")
def webhooks_replay(
    account: Annotated[str, typer.Option(help="the account's id")],
    webhook: Annotated[str, typer.Option(help="the webhook's id in the org file")],
    since: Annotated[dt.datetime | None, typer.Option(help="only deliveries made since then (UTC)")] = None,
) -> None:
    """Send a webhook's failed deliveries again, each with its own webhook-id (receivers drop repeats)."""
    from models.uow import UnitOfWork
    from workers.webhooks import replay

    with UnitOfWork() as uow:
        row = uow.orgs.account_by_slug(account)
        endpoint = uow.webhooks.endpoint_by_slug(row.id, webhook) if row is not None else None
        if endpoint is None:
            raise typer.BadParameter(f"no webhook {webhook!r} in account {account!r}", param_hint="--webhook")
        ids = replay(uow, endpoint, since=since.replace(tzinfo=dt.UTC) if since and since.tzinfo is None else since)
    console.print(f"replayed {len(ids)} failed deliver{'y' if len(ids) == 1 else 'ies'}")


@app.command("relay")
def relay(
    every: Annotated[float | None, typer.Option(help="seconds between passes (LEADRELAY_RELAY_EVERY_SECONDS)")] = None,
    once: Annotated[bool, typer.Option(help="one pass, then exit")] = False,
) -> None:
    """Send again the task of kept work not done a while after it was stored (intakes, texts, mail,
    bulk jobs, imports, webhook deliveries, and those whose retry is due). Every worker runs the same pass
    itself unless started with --no-relay: this command is for running it apart. Safe on several hosts at
    once (rows are claimed with SKIP LOCKED)."""
    from workers.relay import run_forever, sweep

    if once:
        console.print(sweep())
        return
    run_forever(every)


@app.command("import")
def import_csv(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    account: Annotated[str, typer.Option(help="the account's id")],
    owner: Annotated[str, typer.Option(help="the entity that owns every lead the file makes (O1)")],
    by: Annotated[str, typer.Option(help="the user importing: the owner agent, or an admin of the owner")],
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="'Header=field' for a column the usual spellings miss; 'Header=' skips one"),
    ] = None,
) -> None:
    """Import a CSV of leads for an owner: streamed, de-duplicated, owned, routed and on the timeline."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from models.uow import UnitOfWork
    from workers.errors import error_reason
    from workers.imports import (
        ImportInvalid,
        ImportRefused,
        create_import,
        file_chunks,
        mark_failed,
        parse_map,
        run_import,
    )

    try:
        mapping = parse_map(map_ or [])
        with UnitOfWork() as uow:
            found = uow.orgs.account_by_slug(account)
            if found is None:
                raise ImportInvalid("account", f"no account {account!r}")
            caller = uow.orgs.caller_by_slug(found.id, by)
            if caller is None:
                raise ImportInvalid("by", f"no active user {by!r} in account {account!r}")
            import_id = create_import(uow, caller=caller, owner_slug=owner, filename=file.name, mapping=mapping)
            uow.commit()
    except ImportRefused as exc:
        console.print(f"[red]refused: {exc}[/red]", highlight=False)
        raise typer.Exit(1) from exc
    except ImportInvalid as exc:
        console.print(f"[red]--{exc.field}: {exc.message}[/red]", highlight=False)
        raise typer.Exit(2) from exc

    size = file.stat().st_size
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("reading", total=size)

        def report(phase: str, done: int, total: int | None) -> None:
            if phase == "reading":
                bar.update(task, completed=done)
            else:
                bar.update(task, description=phase, completed=size)

        try:
            summary = run_import(import_id, file_chunks(str(file)), progress=report)
        except Exception as exc:  # the import rolled back whole; say so on its row and here
            mark_failed(import_id, error_reason(exc))
            console.print(f"[red]import {import_id} failed, nothing was imported: {exc}[/red]", highlight=False)
            raise typer.Exit(1) from exc

    if summary.status != "done":
        console.print(f"[red]import {import_id} failed: {summary.error}[/red]", highlight=False)
        raise typer.Exit(1)
    table = Table(title=f"import {import_id}: {file.name} for {owner}")
    for name in ("rows", "created", "already existing", "duplicates inside the file", "rejected"):
        table.add_column(name, justify="right")
    table.add_row(
        *(str(n) for n in (summary.rows, summary.created, summary.existing, summary.duplicates, summary.rejected))
    )
    console.print(table)
    if summary.ignored_columns:
        console.print(f"columns not imported: {', '.join(summary.ignored_columns)}", highlight=False)
    if summary.rejections:
        rejected = Table(title=f"rejected rows (first {len(summary.rejections)} of {summary.rejected})")
        rejected.add_column("line", justify="right")
        rejected.add_column("reason")
        for line, reason in summary.rejections[:20]:
            rejected.add_row(str(line), reason)
        console.print(rejected)


@app.command("dev")
def dev(
    port: int = 8000,
    exit_after_demo: Annotated[
        bool, typer.Option("--exit-after-demo", help="stop once the demo leads are printed")
    ] = False,
) -> None:
    """The whole pipeline on the embedded defaults: API, a real Celery worker, the demo org and a few
    sample registrations, printed as a table. Ctrl-C stops all."""
    from leadrelay.dev import run_dev

    sys.exit(run_dev(port=port, exit_after_demo=exit_after_demo, env=dict(os.environ)))


def main() -> None:
    app()
