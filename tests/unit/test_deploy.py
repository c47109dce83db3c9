"""docker-compose.yml and the Dockerfile, checked by their parts (no Docker engine runs here): every
command a service runs, and every option it passes, exists; published ports and healthchecks match what
the commands listen on and serve; every LEADRELAY_* variable is a setting; secrets have no defaults; the
dependencies are well-formed; each service's settings validate in production; and the image is slim,
non-root, and copies every package."""

from __future__ import annotations

import fnmatch
import functools
import importlib
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer
import yaml
from celery import Celery
from celery.bin.celery import celery as celery_cli
from fastapi import FastAPI
from flower.urls import handlers as flower_handlers  # type: ignore[import-untyped]
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from starlette.routing import Match

from intake.api import create_app
from leadrelay.cli import app as leadrelay_cli
from leadrelay.settings import Settings
from workers.celeryconfig import TASK_TIME_LIMIT

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGES = [p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]]

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")
# Variables that hold a credential: never a default, so compose refuses to start without them.
SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|BASIC_AUTH|SMTP_URL|API_KEY")
# Secrets of an optional feature (texting): empty by default, which the code refuses rather than trusts.
OPTIONAL_SECRETS = {"TWILIO_AUTH_TOKEN", "TWILIO_AUTH_TOKEN_NEXT"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (what a command in a container must listen on to be published)
# The infrastructure the stack keeps to itself: nothing outside the compose network reaches them.
INTERNAL = {"postgres", "redis"}


def app_services() -> list[tuple[str, dict[str, Any]]]:
    """The services that run the image built from this repository."""
    return [(name, svc) for name, svc in SERVICES.items() if "build" in svc]


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def interpolate(value: str) -> str:
    """What compose makes of a value when every required variable is set (to a dummy) and no optional one is."""

    def one(m: re.Match[str]) -> str:
        if m["op"] in (":?", "?", None):
            if m["name"] == "LEADRELAY_SECRET_KEY":  # its format is checked at start: a well-formed dummy
                return "A" * 43 + "="
            return f"dummy-{m['name'].lower().replace('_', '-')}"
        return m["arg"] or ""

    return "$".join(INTERPOLATION.sub(one, part) for part in value.split("$$"))


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


# -- commands -------------------------------------------------------------------------------------------


# Typer vendors its own click (typer._click) and Celery uses click itself: commands and parameters are
# told apart by what they have, not by their classes.
Command = Any


def is_group(command: Command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def option_of(command: Command, name: str) -> Any:
    for param in command.params:
        if param.param_type_name == "option" and name in (*param.opts, *param.secondary_opts):
            return param
    return None


def resolve(argv: list[str]) -> list[tuple[Command, dict[str, Any]]]:
    """Walk argv (``leadrelay ...`` or ``celery ...``) through the real click command tree: each command
    it names, with the options given to it. Fails on an unknown command or option."""
    if argv[0] == "leadrelay":
        root: Command = typer.main.get_command(leadrelay_cli)
    else:
        assert argv[0] == "celery", argv
        root = celery_cli
    chain: list[tuple[Command, dict[str, Any]]] = [(root, {})]
    tokens = iter(argv[1:])
    for token in tokens:
        command, given = chain[-1]
        if token.startswith("-"):
            name, eq, value = token.partition("=")
            option = option_of(command, name)
            assert option is not None, f"{' '.join(argv)}: {command.name} has no option {name}"
            if not eq and not (option.is_flag or option.count):
                value = next(tokens)
            given[option.name or name] = value
        elif is_group(command):
            sub = command.commands.get(token)
            assert sub is not None, f"{' '.join(argv)}: {command.name} has no command {token}"
            chain.append((sub, {}))
        else:
            assert any(p.param_type_name == "argument" for p in command.params), f"{' '.join(argv)}: {token}?"
    assert not is_group(chain[-1][0]), f"{' '.join(argv)} names no command"
    return chain


def given_or_default(command: Command, given: dict[str, Any], *names: str) -> Any:
    for param in command.params:
        if param.name in names:
            return given.get(param.name, param.default)
    return None


def listens_on(service: dict[str, Any]) -> tuple[str, int] | None:
    """The address and port the service's command serves HTTP on (its options, or their defaults)."""
    command, given = resolve(service["command"])[-1]
    port = given_or_default(command, given, "port")
    if port is None:
        return None
    return str(given_or_default(command, given, "host", "address")), int(port)


def healthcheck_argvs(service: dict[str, Any]) -> list[list[str]]:
    test = service.get("healthcheck", {}).get("test", [])
    if not test:
        return []
    if test[0] == "CMD":
        return [test[1:]]
    assert test[0] == "CMD-SHELL", test
    return [shlex.split(part) for part in interpolate(test[1]).split("|")]


@pytest.mark.parametrize(("name", "service"), app_services())
def test_every_command_and_its_options_exist(name: str, service: dict[str, Any]) -> None:
    chain = resolve(service["command"])
    if service["command"][0] == "leadrelay":
        # The image runs the console script pip installs from pyproject.toml.
        assert PYPROJECT["project"]["scripts"]["leadrelay"] == "leadrelay.cli:main", name
    if service["command"][0] == "celery":
        # -A names the module holding the Celery app.
        app_module = chain[0][1]["app"]
        assert isinstance(importlib.import_module(app_module).app, Celery), name
    # Celery run by a healthcheck (inspect ping) is checked the same way.
    for argv in healthcheck_argvs(service):
        if argv[0] in ("celery", "leadrelay"):
            resolve(argv)


def test_the_workers_sweep_by_default_and_a_relay_apart_or_beat_run_only_under_their_profiles() -> None:
    relay, beat = resolve(SERVICES["relay"]["command"])[-1], resolve(SERVICES["beat"]["command"])[-1]
    assert relay[0].name == "relay"
    assert beat[0].name == "beat"
    assert SERVICES["relay"]["profiles"] == ["relay"]
    assert SERVICES["beat"]["profiles"] == ["beat"]
    # The default stack is the API and the workers: the workers run the relay's pass, so none turns it off.
    worker = SERVICES["worker"]
    assert "--no-relay" not in worker["command"]
    assert environment(worker).get("LEADRELAY_WORKER_RELAY", "true") == "true"
    assert Settings.model_fields["worker_relay"].default is True
    # The schedule file goes where the image's user can write.
    assert str(beat[1]["schedule"]).startswith("/var/lib/leadrelay/")


def test_the_image_default_command_exists() -> None:
    cmd = next(args for instruction, args in dockerfile() if instruction == "CMD")
    resolve(yaml.safe_load(cmd))


@pytest.mark.parametrize(("name", "service"), app_services())
def test_every_build_context_and_dockerfile_is_in_the_project(name: str, service: dict[str, Any]) -> None:
    build = service["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    assert context.resolve().is_relative_to(ROOT), name
    assert context.is_dir(), name
    dockerfile_path = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile_path.is_file(), name


# -- environment and secrets ---------------------------------------------------------------------------


def cli_envvars(command: Command) -> Iterator[str]:
    for param in command.params:
        envvar = param.envvar
        if isinstance(envvar, str):
            yield envvar
        elif envvar:
            yield from envvar
    if is_group(command):
        for sub in command.commands.values():
            yield from cli_envvars(sub)


KNOWN_VARIABLES = {f"LEADRELAY_{field.upper()}" for field in Settings.model_fields} | set(
    cli_envvars(typer.main.get_command(leadrelay_cli))
)


def test_every_leadrelay_variable_is_a_setting_or_read_by_the_command() -> None:
    # Settings ignore unknown variables (extra="ignore"): a misspelt one would silently be a default.
    assert "LEADRELAY_FLOWER_BASIC_AUTH" in KNOWN_VARIABLES
    for name, service in SERVICES.items():
        for variable in environment(service):
            if variable.startswith("LEADRELAY_"):
                assert variable in KNOWN_VARIABLES, f"{name}: {variable} is no setting"
    for instruction, args in dockerfile():
        if instruction == "ENV":
            for variable in (item.partition("=")[0] for item in shlex.split(args)):
                if variable.startswith("LEADRELAY_"):
                    assert variable in KNOWN_VARIABLES, f"Dockerfile: {variable} is no setting"


def test_secrets_are_required_and_have_no_default() -> None:
    seen = set()
    for text in strings(COMPOSE):
        for m in INTERPOLATION.finditer(text):
            if not SECRET.search(m["name"]):
                continue
            seen.add(m["name"])
            if m["name"] in OPTIONAL_SECRETS:
                assert m["op"] == ":-", f"{m[0]}: an optional secret defaults to empty"
                assert not m["arg"], f"{m[0]}: an optional secret defaults to empty"
            else:
                assert m["op"] == ":?", f"{m[0]}: a secret must be required (${{{m['name']}:?message}})"
                assert m["arg"].strip(), f"{m[0]}: say what to set"
    assert {"POSTGRES_PASSWORD", "LEADRELAY_FLOWER_BASIC_AUTH", "LEADRELAY_SMTP_URL"} <= seen


def test_no_credential_is_written_in_the_file() -> None:
    for name, service in SERVICES.items():
        for variable, value in environment(service).items():
            masked = INTERPOLATION.sub("INTERPOLATED", value)
            if SECRET.search(variable):
                assert masked == "INTERPOLATED", f"{name}: {variable} must come from the environment"
            if "://" in masked:
                password = urlsplit(masked).password
                assert password in (None, "INTERPOLATED"), f"{name}: {variable} has a password in the file"


def test_the_database_url_carries_the_postgres_password() -> None:
    password = environment(SERVICES["postgres"])["POSTGRES_PASSWORD"]
    variable = INTERPOLATION.fullmatch(password)
    assert variable is not None
    for name, service in app_services():
        url = urlsplit(interpolate(environment(service)["LEADRELAY_DATABASE_URL"]))
        assert url.password == interpolate(password), name
        assert url.hostname == "postgres", name
        assert url.username == environment(SERVICES["postgres"])["POSTGRES_USER"], name
        assert url.path == "/" + environment(SERVICES["postgres"])["POSTGRES_DB"], name


@pytest.mark.parametrize(("name", "service"), app_services())
def test_every_app_service_has_valid_production_settings(
    name: str, service: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exactly the service's environment, read the way the process reads it.
    for variable in [v for v in os.environ if v.startswith("LEADRELAY_")]:
        monkeypatch.delenv(variable)
    for variable, value in environment(service).items():
        monkeypatch.setenv(variable, interpolate(value))
    settings = Settings(_env_file=None)
    assert settings.env == "production"
    assert settings.effective_database_url.startswith("postgresql+psycopg://")
    assert settings.effective_broker_url.startswith("redis://redis:6379/")
    assert settings.smtp_url, "production mail needs an SMTP server"
    assert settings.log_format == "json"


def test_every_app_service_shares_one_database_and_one_broker() -> None:
    for variable in ("LEADRELAY_DATABASE_URL", "LEADRELAY_BROKER_URL", "LEADRELAY_QUEUE_PREFIX"):
        assert len({environment(service).get(variable) for _, service in app_services()}) == 1, variable


def test_flower_requires_its_basic_auth() -> None:
    value = environment(SERVICES["flower"])["LEADRELAY_FLOWER_BASIC_AUTH"]
    m = INTERPOLATION.fullmatch(value)
    assert m is not None
    assert m["op"] == ":?"


def test_flower_refuses_to_start_in_production_without_basic_auth() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEADRELAY_", "FLOWER_"))}
    env |= {k: interpolate(v) for k, v in environment(SERVICES["flower"]).items() if k.startswith("LEADRELAY_")}
    del env["LEADRELAY_FLOWER_BASIC_AUTH"]
    argv = [sys.executable, "-m", *SERVICES["flower"]["command"]]
    result = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LEADRELAY_FLOWER_BASIC_AUTH" in result.stdout


def test_production_refuses_the_embedded_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEADRELAY_DATABASE_URL", "LEADRELAY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="must be set in production"):
        Settings(_env_file=None, env="production")


def test_production_refuses_to_start_without_a_metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEADRELAY_METRICS_TOKEN", raising=False)
    servers = {
        "database_url": "postgresql+psycopg://db/leadrelay",
        "broker_url": "redis://redis:6379/0",
        "secret_key": "A" * 43 + "=",
    }
    with pytest.raises(ValueError, match="LEADRELAY_METRICS_TOKEN must be set in production"):
        Settings(_env_file=None, env="production", **servers)
    settings = Settings(_env_file=None, env="production", metrics_token="t0ken", **servers)
    # The API's docs are off in production unless asked for, and on elsewhere.
    assert not settings.api_docs_enabled
    assert Settings(_env_file=None, env="production", metrics_token="t0ken", api_docs=True, **servers).api_docs_enabled
    assert Settings(_env_file=None, env="dev").api_docs_enabled


# -- ports and healthchecks ----------------------------------------------------------------------------


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host address, host port, container port) of each port in the short syntax."""
    out = []
    for port in service.get("ports", []):
        parts = str(port).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else ALL_INTERFACES
        out.append((host_ip, int(parts[-2] if len(parts) > 1 else parts[-1]), int(parts[-1])))
    return out


@pytest.mark.parametrize(("name", "service"), [(n, s) for n, s in app_services() if s.get("ports")])
def test_published_ports_are_the_ports_the_command_listens_on(name: str, service: dict[str, Any]) -> None:
    listening = listens_on(service)
    assert listening is not None, f"{name} publishes ports but its command serves none"
    address, port = listening
    assert address == ALL_INTERFACES, f"{name} listens on {address}: the published port would reach nothing"
    for _, _, target in published(service):
        assert target == port, f"{name}: publishes {target}, listens on {port}"


def test_the_database_the_broker_and_flower_are_not_open_to_the_world() -> None:
    for name in INTERNAL:
        assert not SERVICES[name].get("ports"), f"{name} is for the stack only"
    # Flower speaks plain HTTP with basic auth: the host's loopback only, a TLS proxy in front.
    assert all(host == "127.0.0.1" for host, _, _ in published(SERVICES["flower"]))


@functools.cache
def api_app() -> FastAPI:
    return create_app()


def api_serves(path: str) -> bool:
    scope = {"type": "http", "method": "GET", "path": path, "root_path": "", "headers": [], "query_string": b""}
    return any(route.matches(scope)[0] is Match.FULL for route in api_app().routes)


def flower_serves(path: str) -> bool:
    for handler in flower_handlers:
        pattern = handler.regex.pattern if hasattr(handler, "regex") else handler[0]
        if pattern.rstrip("$") != ".*" and re.fullmatch(pattern.rstrip("$"), path):
            return True
    return False


SERVES = {"api": api_serves, "flower": flower_serves}


@pytest.mark.parametrize(("name", "service"), [(n, s) for n, s in app_services() if "healthcheck" in s])
def test_healthchecks_ask_a_real_route_on_the_port_served(name: str, service: dict[str, Any]) -> None:
    urls = [u for argv in healthcheck_argvs(service) for a in argv for u in re.findall(r"https?://[^\s'\"]+", a)]
    command = resolve(service["command"])[-1][0].name
    if command not in SERVES:
        assert not urls, f"{name}: {command} serves no HTTP"
        return
    assert urls, f"{name}: a healthcheck of an HTTP service asks it over HTTP"
    listening = listens_on(service)
    assert listening is not None
    for url in map(urlsplit, urls):
        assert url.port == listening[1], f"{name}: {url.geturl()} is not the port served ({listening[1]})"
        assert SERVES[command](url.path), f"{name}: {command} has no route {url.path}"


def test_the_api_healthcheck_asks_readiness() -> None:
    # Ready means the database and the broker answer; /healthz only says the process runs.
    assert "/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_the_broker_keeps_messages_and_never_evicts() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert "healthcheck" in SERVICES["redis"]


# -- dependencies and scaling --------------------------------------------------------------------------


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in deps.items()}


def test_every_dependency_is_a_service_that_can_meet_its_condition() -> None:
    for name, service in SERVICES.items():
        for dep, condition in depends_on(service).items():
            assert dep in SERVICES, f"{name} depends on an undefined {dep}"
            target = SERVICES[dep]
            if condition == "service_healthy":
                assert "healthcheck" in target, f"{name} waits for {dep} to be healthy; it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert target.get("restart", "no") == "no", f"{dep} is a one-shot: it must not restart"
            else:
                assert condition == "service_started", f"{name}: {condition}?"
            # A service of the default stack must not wait for one that runs only under a profile.
            if "profiles" not in service:
                assert "profiles" not in target, f"{name} depends on {dep}, which runs only under a profile"


def test_the_dependencies_have_no_cycle() -> None:
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for dep in depends_on(SERVICES[name]):
                visit(dep, (*path, name))
            done.add(name)

    for name in SERVICES:
        visit(name, ())


def test_migrations_run_once_before_the_app() -> None:
    assert resolve(SERVICES["migrate"]["command"])[-1][0].name == "upgrade"
    for name, service in app_services():
        if name not in ("migrate", "flower"):
            assert depends_on(service).get("migrate") == "service_completed_successfully", name


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_workers_scale_and_shut_down_softly() -> None:
    worker = SERVICES["worker"]
    # Several replicas need no fixed name or port.
    assert "container_name" not in worker
    assert not worker.get("ports")
    assert worker.get("deploy", {}).get("replicas", 1) >= 1
    # SIGTERM is Celery's warm shutdown; the grace period outlasts the longest task Celery lets run.
    assert worker["stop_signal"] == "SIGTERM"
    assert seconds(worker["stop_grace_period"]) > TASK_TIME_LIMIT


def test_no_service_has_a_fixed_container_name() -> None:
    assert [name for name, service in SERVICES.items() if "container_name" in service] == []


# -- the image -----------------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of each instruction, continuation lines joined."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in (ROOT / "Dockerfile").read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
        for line in text.splitlines()
        if line.strip()
    ]


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_image_is_slim_python_311_and_runs_as_a_user() -> None:
    instructions = dockerfile()
    bases = [args.split()[0] for instruction, args in instructions if instruction == "FROM"]
    assert bases
    assert all(base == "python:3.11-slim" for base in bases), bases
    users = [args.split(":")[0] for instruction, args in instructions if instruction == "USER"]
    assert users
    assert users[-1] not in ("root", "0"), users


def test_the_image_copies_every_package_and_what_pip_needs() -> None:
    copies = [args for instruction, args in dockerfile() if instruction == "COPY" and "--from" not in args]
    for package in PACKAGES:
        assert f"{package} {package}" in copies, f"COPY {package} {package}"
    copied = {source for args in copies for source in args.split()[:-1]}
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    ignored = dockerignore()
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the project"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for these requirements here (read from the installed metadata)."""
    names: set[str] = set()
    expanded: set[tuple[str, str]] = set()
    todo = [r for r in map(Requirement, requirements) if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        names.add(name)
        for extra in ("", *req.extras):
            if (name, extra) not in expanded:
                expanded.add((name, extra))
                for line in metadata.requires(name) or []:
                    dep = Requirement(line)
                    if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                        todo.append(dep)
    return names


def test_the_image_installs_what_the_broker_and_database_drivers_import() -> None:
    # What the image's `pip install` asks for: the project's dependencies, and any requirement named beside it.
    pip = next(args for instruction, args in dockerfile() if instruction == "RUN" and "pip install ." in args)
    extra = [a for a in shlex.split(pip.split("pip install .", 1)[1]) if not a.startswith("-")]
    closure = installed_closure([*PYPROJECT["project"]["dependencies"], *extra])
    # Redis is the broker: kombu's transport imports what kombu lists under its redis extra (packaging, redis).
    redis_transport = installed_closure(["kombu[redis]"]) - installed_closure(["kombu"])
    assert redis_transport, "kombu has no redis extra any more: check what its transport needs"
    assert redis_transport <= closure, redis_transport - closure
    # postgresql+psycopg in a slim image, which has no libpq: the binary wheel.
    assert {"psycopg", "psycopg-binary"} <= closure


def test_the_build_context_leaves_out_the_venv_git_caches_tests_and_secrets() -> None:
    ignored = dockerignore()
    for must in (".git", ".venv", "**/__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", "tests", ".env"):
        assert must in ignored, f".dockerignore: {must}"


def test_every_worker_of_the_app_gets_the_relay_step_and_its_no_relay_option() -> None:
    # On the app itself, so `celery -A workers worker` (the compose command) has it as `leadrelay worker` does.
    from workers import app as celery_app
    from workers.relay import RelaySweep

    assert RelaySweep in celery_app.steps["worker"]
    assert any("--no-relay" in option.opts for option in celery_app.user_options["worker"])
    assert "--no-relay" in " ".join(
        str(p.opts) for p in typer.main.get_command(leadrelay_cli).commands["worker"].params
    )
