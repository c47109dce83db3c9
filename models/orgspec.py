"""The org file's spec (docs/org-file.md): checked here, read from YAML by :mod:`intake.orgfile`
(the CLI's edge), written into the database by :mod:`models.org`.

Nothing here touches the database or reads a file. Every problem is reported at once, each prefixed
by where it is in the file (``entities[3].office: unknown entity 'dwntown'``), so one run of
``leadrelay org apply`` shows everything to fix. Keys and tokens given as ``..._env: NAME`` are
read from the environment while parsing; afterwards ``key``/``token`` hold the secret whichever
way it was given, as :class:`~pydantic.SecretStr` so that a printed spec never shows it.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeInt,
    PositiveInt,
    SecretStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from rules.contact import InvalidPhone, normalize_phone
from rules.routing import STRATEGIES
from rules.webhooks import EVENT_TYPES

KINDS = ("company", "office", "team", "agent")


class OrgFileError(ValueError):
    """An org file that cannot be applied; ``errors`` holds one line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))


# --- field types ------------------------------------------------------------------------------------

_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _slug(value: str) -> str:
    # Ids appear in API paths and in other rows' references, so they are kept to URL-safe slugs.
    if not _SLUG.match(value):
        raise ValueError(f"{value!r} is not an id: use 1-64 lower-case letters, digits, '.', '-' or '_'")
    return value


def _env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def _domain(value: str) -> str:
    """A host as ownership looks it up (``rules.ownership.host_of``): lower case, no trailing dot."""
    host = value.strip().lower().rstrip(".")
    if "://" in host:
        raise ValueError(f"domain {value!r} has a scheme: give the host only, like 'example.com'")
    if any(c in host for c in "/?#"):
        raise ValueError(f"domain {value!r} has a path: give the host only, like 'example.com'")
    if ":" in host:
        raise ValueError(f"domain {value!r} has a port: give the host only, like 'example.com'")
    if not host or len(host) > 253 or not all(_HOST_LABEL.match(label) for label in host.split(".")):
        raise ValueError(f"{value!r} is not a host name (internationalised names go in their xn-- form)")
    return host


def _phone(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML reads an unquoted +15550100000 as the integer 15550100000, losing the '+'.
        raise ValueError("put phone numbers in quotes: YAML reads an unquoted +1555... as a number")
    if not isinstance(value, str):
        raise ValueError("expected a phone number in E.164 form, like '+15550100000'")
    try:
        return normalize_phone(value)
    except InvalidPhone as exc:
        raise ValueError(f"{value!r}: {exc}") from exc


def _email(value: str) -> str:
    # test_environment admits the reserved .test names that test and demo org files use; nothing is
    # sent by checking, so deliverability is not asked.
    try:
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"{value!r} is not an email address: {exc}") from exc


def _zip(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads 02134 as an octal number; quoting keeps the ZIP as written.
        raise ValueError("put ZIP codes in quotes: YAML reads 02134 as a number")
    return value


def _secret_not_empty(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("must not be empty")
    return value


Slug = Annotated[str, AfterValidator(_slug)]
EnvName = Annotated[str, AfterValidator(_env_name)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
Domain = Annotated[str, AfterValidator(_domain)]
Email = Annotated[str, Field(max_length=320), AfterValidator(_email)]
Phone = Annotated[str, BeforeValidator(_phone)]
Zip = Annotated[str, BeforeValidator(_zip), Field(min_length=1, max_length=10)]
Secret = Annotated[SecretStr, AfterValidator(_secret_not_empty)]


class _Spec(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- credentials --------------------------------------------------------------------------------------


def _key_item(value: object) -> object:
    if isinstance(value, str):
        return {"key": value}
    if not isinstance(value, dict):
        raise ValueError("expected a key, or {key_env: NAME}")
    return value


class IntakeKeySpec(_Spec):
    """An intake key: written as a plain string in the file, or as ``{key_env: NAME}``."""

    key: Secret | None = None
    key_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> IntakeKeySpec:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give the key itself or key_env, not both")
        return self


IntakeKeyItem = Annotated[IntakeKeySpec, BeforeValidator(_key_item)]


class SmsSpec(_Spec):
    """The account's SMS gateway. ``auth_tokens`` may list several while a token is rotated; the first
    one (else the first of ``auth_tokens_env``) sends texts, and every one of either list is accepted on
    the webhooks.

    Literal ``auth_tokens`` are stored encrypted (they must be usable for HMACs, so they cannot be
    hashed: :mod:`models.secrets`); for ``auth_tokens_env`` only the variables' *names* are stored,
    and the API and workers read the tokens from their own environment."""

    provider: Literal["twilio"]
    account_sid: Annotated[str, Field(min_length=1, max_length=64)]
    auth_tokens: list[Secret] = Field(default_factory=list)
    auth_tokens_env: list[EnvName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_token(self) -> SmsSpec:
        if not self.auth_tokens and not self.auth_tokens_env:
            raise ValueError("give auth_tokens or auth_tokens_env: inbound texts are checked with them")
        return self


# --- outbound webhooks ----------------------------------------------------------------------------


def _webhook_url(value: str) -> str:
    url = value.strip()
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("https", "http") or not rest:
        raise ValueError(f"{value!r} is not an https:// URL")
    host = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if "@" in host:
        raise ValueError("put no user or password in the URL: receivers check the signature instead")
    if not host or host.startswith(":"):
        raise ValueError(f"{value!r} has no host")
    return url


def _webhook_secret(value: SecretStr) -> SecretStr:
    """A Standard Webhooks secret: ``whsec_`` and base64 of 24 to 64 random bytes."""
    raw = value.get_secret_value().strip()
    if not raw.startswith("whsec_"):
        raise ValueError("a webhook secret starts with 'whsec_' (generate one with: leadrelay webhooks secret)")
    try:
        key = base64.b64decode(raw.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "a webhook secret is 'whsec_' and base64 (generate one with: leadrelay webhooks secret)"
        ) from None
    if not 24 <= len(key) <= 64:
        raise ValueError("a webhook secret holds 24 to 64 bytes (generate one with: leadrelay webhooks secret)")
    return SecretStr(raw)


def _event_type(value: str) -> str:
    if value != "*" and value not in EVENT_TYPES:
        close = difflib.get_close_matches(value, list(EVENT_TYPES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (one of: {', '.join(EVENT_TYPES)}, or '*')"
        raise ValueError(f"unknown event {value!r}{hint}")
    return value


WebhookSecret = Annotated[SecretStr, AfterValidator(_webhook_secret)]
EventType = Annotated[str, AfterValidator(_event_type)]


class WebhookSpec(_Spec):
    """An outbound webhook: where, which events (``*`` for all), and the secrets that sign each delivery
    (several while one is rotated: each gives a signature of its own). Literal ``secrets`` are stored
    encrypted; for ``secrets_env`` only the variables' names are stored and workers read them."""

    id: Slug
    url: Annotated[str, Field(min_length=1, max_length=2000), AfterValidator(_webhook_url)]
    events: Annotated[list[EventType], Field(min_length=1)]
    secrets: list[WebhookSecret] = Field(default_factory=list)
    secrets_env: list[EnvName] = Field(default_factory=list)
    active: bool = True

    @model_validator(mode="after")
    def _some_secret(self) -> WebhookSpec:
        if not self.secrets and not self.secrets_env:
            raise ValueError("give secrets or secrets_env: every delivery is signed")
        return self


# --- entities ----------------------------------------------------------------------------------------


class _EntityBase(_Spec):
    id: Slug
    name: Name
    domains: list[Domain] = Field(default_factory=list)
    smart_numbers: list[Phone] = Field(default_factory=list)
    # User ids: an agent's id or a `users` entry's id.
    admins: list[Slug] = Field(default_factory=list)


class CompanySpec(_EntityBase):
    kind: Literal["company"]


class OfficeSpec(_EntityBase):
    kind: Literal["office"]
    # Optional: an office outside a company owns its own site's leads (rules.ownership, O3).
    parent: Slug | None = None


class TeamSpec(_EntityBase):
    kind: Literal["team"]


class AgentSpec(_EntityBase):
    kind: Literal["agent"]
    email: Email | None = None
    phone: Phone | None = None
    office: Slug | None = None
    teams: list[Slug] = Field(default_factory=list)
    active: bool = True
    # Our extension: a paused agent stays connected but routing passes over them (A2).
    paused: bool = False
    private: bool = False
    hide_from_team: bool = False


def _entity_tag(value: object) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return f"kind:{kind}" if kind in KINDS else None


# Tags contain ':' (which no id or key can) so that error paths can drop them; see _path.
EntitySpec = Annotated[
    Annotated[CompanySpec, Tag("kind:company")]
    | Annotated[OfficeSpec, Tag("kind:office")]
    | Annotated[TeamSpec, Tag("kind:team")]
    | Annotated[AgentSpec, Tag("kind:agent")],
    Discriminator(
        _entity_tag,
        custom_error_type="entity_kind",
        custom_error_message="kind: must be one of company, office, team, agent",
    ),
]


# --- users and connections ------------------------------------------------------------------------


class UserSpec(_Spec):
    """A user: an agent (same id) given a token or admin roles, or someone who is not an agent."""

    id: Slug
    name: Name | None = None
    email: Email | None = None
    admin_of: list[Slug] = Field(default_factory=list)
    token: Secret | None = None
    token_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> UserSpec:
        if self.token is not None and self.token_env is not None:
            raise ValueError("give token or token_env, not both")
        return self


class ApiConnectionSpec(_Spec):
    id: Slug
    provider: Annotated[str, Field(min_length=1, max_length=40)]
    entity: Slug
    key: Secret | None = None
    key_env: EnvName | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ApiConnectionSpec:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give key or key_env (exactly one)")
        return self


# --- routing -----------------------------------------------------------------------------------------


class WhenSpec(_Spec):
    """A rule's conditions; the keys are ``rules.routing.CONDITION_KEYS`` (a unit test keeps them equal)."""

    price_min: NonNegativeInt | None = None
    price_max: NonNegativeInt | None = None
    zips: list[Zip] | None = None
    lead_types: list[Literal["buyer", "seller", "renter"]] | None = None
    source_kinds: list[Annotated[str, Field(min_length=1, max_length=20)]] | None = None

    @model_validator(mode="after")
    def _price_range(self) -> WhenSpec:
        if self.price_min is not None and self.price_max is not None and self.price_min > self.price_max:
            raise ValueError("price_min is above price_max: no lead could match")
        return self

    def conditions(self) -> dict[str, Any]:
        """The given conditions only, as ``RoutingRule.conditions`` stores them."""
        return self.model_dump(exclude_none=True)


def _agents_tag(value: object) -> str:
    return "agents:connected" if isinstance(value, str) else "agents:list"


Agents = Annotated[
    Annotated[list[Slug], Field(min_length=1), Tag("agents:list")]
    | Annotated[Literal["connected"], Tag("agents:connected")],
    Discriminator(_agents_tag),
]


class RuleSpec(_Spec):
    name: Name
    when: WhenSpec = Field(default_factory=WhenSpec)
    # "connected": every active agent connected to the routing entity when the lead arrives.
    agents: Agents
    strategy: str = "round_robin"
    weights: dict[Slug, PositiveInt] | None = None
    campaign: Name | None = None

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}: use one of {', '.join(STRATEGIES)}")
        return value

    @property
    def all_connected(self) -> bool:
        return self.agents == "connected"

    @property
    def agent_ids(self) -> list[str]:
        return [] if isinstance(self.agents, str) else list(self.agents)


class RoutingSpec(_Spec):
    entity: Slug
    rules: list[RuleSpec] = Field(default_factory=list)


class OrgSpec(_Spec):
    account: Slug
    name: Name
    # D1 when true (one lead per contact and owner), D3 when false.
    duplication: bool = True
    intake_keys: list[IntakeKeyItem] = Field(default_factory=list)
    sms: SmsSpec | None = None
    entities: list[EntitySpec] = Field(default_factory=list)
    users: list[UserSpec] = Field(default_factory=list)
    api_connections: list[ApiConnectionSpec] = Field(default_factory=list)
    routing: list[RoutingSpec] = Field(default_factory=list)
    webhooks: list[WebhookSpec] = Field(default_factory=list)

    @property
    def agents(self) -> list[AgentSpec]:
        return [e for e in self.entities if isinstance(e, AgentSpec)]


def plain_http_webhooks(spec: OrgSpec) -> list[str]:
    """The webhooks whose URL is plain ``http://``: refused unless ``LEADRELAY_WEBHOOKS_ALLOW_PRIVATE`` (the
    caller, which knows the settings, decides)."""
    return [
        f"webhooks[{i}].url: use https:// (LEADRELAY_WEBHOOKS_ALLOW_PRIVATE=true allows http:// for development)"
        for i, w in enumerate(spec.webhooks)
        if w.url.lower().startswith("http://")
    ]


def parse_org(data: Mapping[str, Any]) -> OrgSpec:
    """Check ``data`` (an org file already read from YAML) and return it with secrets resolved.

    Raises :class:`OrgFileError` with every problem found: shape and types first, then references
    between sections, which are checked over whichever items have a valid shape."""
    if not isinstance(data, Mapping):
        raise OrgFileError(["(top level): expected a mapping with account, name, entities, ..."])
    errors: list[str] = []
    spec: OrgSpec | None = None
    try:
        spec = OrgSpec.model_validate(dict(data))
    except ValidationError as exc:
        errors.extend(_format_error(err) for err in exc.errors())
    errors.extend(_CrossCheck(data).errors())
    if errors:
        raise OrgFileError(sorted(_unique(errors), key=_file_order))
    assert spec is not None
    return _resolve_secrets(spec)


# --- error paths ------------------------------------------------------------------------------------


def _path(loc: Sequence[int | str]) -> str:
    """``("entities", 3, "kind:agent", "office")`` -> ``entities[3].office``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif ":" in part:
            continue  # a union tag of ours, not a place in the file
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


# Which model a mapping at a path (indexes dropped, union tags kept) is, to suggest the key meant.
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): OrgSpec,
    ("intake_keys",): IntakeKeySpec,
    ("sms",): SmsSpec,
    ("entities", "kind:company"): CompanySpec,
    ("entities", "kind:office"): OfficeSpec,
    ("entities", "kind:team"): TeamSpec,
    ("entities", "kind:agent"): AgentSpec,
    ("users",): UserSpec,
    ("api_connections",): ApiConnectionSpec,
    ("routing",): RoutingSpec,
    ("routing", "rules"): RuleSpec,
    ("routing", "rules", "when"): WhenSpec,
    ("webhooks",): WebhookSpec,
}


def _format_error(err: Any) -> str:
    loc: tuple[int | str, ...] = tuple(err["loc"])
    kind: str = err["type"]
    if kind == "extra_forbidden":
        model = _MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        known = list(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (expected one of: {', '.join(known)})" if known else ""
        return f"{_path(loc)}: unknown key{hint}"
    if kind == "missing":
        return f"{_path(loc)}: required"
    message: str = err["msg"]
    if "agents:connected" in loc:
        return f"{_path(loc)}: expected a list of agent ids or 'connected', not {err.get('input')!r}"
    if kind == "entity_kind":
        return f"{_path((*loc, 'kind'))}: {message.removeprefix('kind: ')}"
    message = message.removeprefix("Value error, ")
    return f"{_path(loc)}: {message[:1].lower()}{message[1:]}"


def _unique(errors: list[str]) -> list[str]:
    return list(dict.fromkeys(errors))


_SECTION_RANK = {name: rank for rank, name in enumerate(OrgSpec.model_fields)}
_LEADING = re.compile(r"^(\w+)(?:\[(\d+)\])?")


def _file_order(error: str) -> tuple[int, int]:
    """Errors grouped by section and item, in the order a reader meets them in the file; the
    sort is stable, so within an item they keep the order the checks found them in."""
    match = _LEADING.match(error)
    if match is None:
        return (len(_SECTION_RANK), 0)
    return (_SECTION_RANK.get(match[1], len(_SECTION_RANK)), int(match[2] or 0))


# --- references between sections -------------------------------------------------------------------


def _items(data: Mapping[str, Any], section: str, adapter: TypeAdapter[Any]) -> Iterator[tuple[int, Any]]:
    """The items of a section that have a valid shape, with their index in the file; the others
    were reported by the full validation and are left out so they cause no follow-on errors."""
    raw = data.get(section)
    if not isinstance(raw, list):
        return
    for i, item in enumerate(raw):
        try:
            yield i, adapter.validate_python(item)
        except ValidationError:
            continue


_ENTITY = TypeAdapter[Any](EntitySpec)
_USER = TypeAdapter(UserSpec)
_CONNECTION = TypeAdapter(ApiConnectionSpec)
_ROUTING = TypeAdapter(RoutingSpec)
_KEY = TypeAdapter[Any](IntakeKeyItem)
_SMS = TypeAdapter(SmsSpec)
_WEBHOOK = TypeAdapter(WebhookSpec)


class _CrossCheck:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data
        self.out: list[str] = []
        self.entities: list[tuple[int, Any]] = list(_items(data, "entities", _ENTITY))
        self.users: list[tuple[int, UserSpec]] = list(_items(data, "users", _USER))
        # Ids of entities whose shape is wrong count too, so a reference to one is not "unknown";
        # their kind is None when it is not a kind at all, and then no kind check complains.
        self.kind_of: dict[str, str | None] = {}
        for raw in data.get("entities") or []:
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                kind = raw.get("kind")
                self.kind_of.setdefault(raw["id"], kind if kind in KINDS else None)
        self.user_ids = {u.id for _, u in self.users} | {
            raw["id"] for raw in data.get("users") or [] if isinstance(raw, dict) and isinstance(raw.get("id"), str)
        }

    def errors(self) -> list[str]:
        self._ids()
        self._entity_references()
        self._users()
        self._places()
        self._connections()
        self._routing()
        self._secrets()
        self._webhooks()
        return self.out

    def err(self, path: str, message: str) -> None:
        self.out.append(f"{path}: {message}")

    def _may_be_agent(self, slug: str) -> bool:
        return slug in self.kind_of and self.kind_of[slug] in ("agent", None)

    def _entity(self, path: str, slug: str, *kinds: str) -> None:
        """Report ``slug`` unless it names an entity of one of ``kinds``."""
        if slug not in self.kind_of:
            self.err(path, f"unknown entity {slug!r}")
            return
        kind = self.kind_of[slug]
        if kind is not None and kinds and kind not in kinds:
            wanted = " or ".join(f"a{'n' if k[0] in 'aeiou' else ''} {k}" for k in kinds)
            self.err(path, f"{slug!r} is a{'n' if kind[0] in 'aeiou' else ''} {kind}, not {wanted}")

    def _ids(self) -> None:
        first: dict[str, str] = {}
        for i, e in self.entities:
            if e.id in first:
                self.err(f"entities[{i}].id", f"duplicate id {e.id!r}, first used at {first[e.id]}")
            else:
                first[e.id] = f"entities[{i}]"
        seen_users: dict[str, str] = {}
        for i, u in self.users:
            if u.id in seen_users:
                self.err(f"users[{i}].id", f"duplicate id {u.id!r}, first used at {seen_users[u.id]}")
                continue
            seen_users[u.id] = f"users[{i}]"
            # An agent is a user with the agent's id: naming an agent here adds to that user.
            if u.id in first and not self._may_be_agent(u.id):
                self.err(
                    f"users[{i}].id",
                    f"duplicate id {u.id!r}, first used at {first[u.id]} (only an agent's id can also be a user)",
                )

    def _entity_references(self) -> None:
        user_names = self.user_ids | {slug for slug in self.kind_of if self._may_be_agent(slug)}
        for i, e in self.entities:
            if isinstance(e, OfficeSpec) and e.parent is not None:
                self._entity(f"entities[{i}].parent", e.parent, "company")
            if isinstance(e, AgentSpec):
                if e.office is not None:
                    self._entity(f"entities[{i}].office", e.office, "office")
                for j, team in enumerate(e.teams):
                    self._entity(f"entities[{i}].teams[{j}]", team, "team")
            for j, admin in enumerate(e.admins):
                if admin not in user_names:
                    self.err(f"entities[{i}].admins[{j}]", f"unknown user {admin!r} (admins are agents or users)")

    def _users(self) -> None:
        for i, u in self.users:
            for j, slug in enumerate(u.admin_of):
                self._entity(f"users[{i}].admin_of[{j}]", slug)
            if u.name is None and not self._may_be_agent(u.id):
                self.err(f"users[{i}].name", "required for a user who is not an agent")

    def _places(self) -> None:
        """A domain or smart number decides who owns a lead, so it can point at one entity only."""
        seen: dict[str, str] = {}
        for i, e in self.entities:
            for field, what in (("domains", "domain"), ("smart_numbers", "smart number")):
                for j, value in enumerate(getattr(e, field)):
                    path = f"entities[{i}].{field}[{j}]"
                    if value in seen:
                        self.err(path, f"{what} {value!r} is also given at {seen[value]}")
                    else:
                        seen[value] = path

    def _connections(self) -> None:
        first: dict[str, str] = {}
        for i, c in _items(self.data, "api_connections", _CONNECTION):
            if c.id in first:
                self.err(f"api_connections[{i}].id", f"duplicate id {c.id!r}, first used at {first[c.id]}")
            first.setdefault(c.id, f"api_connections[{i}]")
            self._entity(f"api_connections[{i}].entity", c.entity)

    def _routing(self) -> None:
        agents = {slug for slug in self.kind_of if self._may_be_agent(slug)}
        first: dict[str, str] = {}
        for i, r in _items(self.data, "routing", _ROUTING):
            path = f"routing[{i}]"
            if r.entity in first:
                self.err(f"{path}.entity", f"{r.entity!r} already has rules at {first[r.entity]}")
            first.setdefault(r.entity, path)
            if r.entity in self.kind_of and self.kind_of[r.entity] == "agent":
                self.err(f"{path}.entity", f"{r.entity!r} is an agent: only companies, offices and teams route leads")
            else:
                self._entity(f"{path}.entity", r.entity)
            for k, rule in enumerate(r.rules):
                self._rule(f"{path}.rules[{k}]", rule, agents)

    def _rule(self, path: str, rule: RuleSpec, agents: set[str]) -> None:
        listed: set[str] = set()
        for j, slug in enumerate(rule.agent_ids):
            if slug in listed:
                self.err(f"{path}.agents[{j}]", f"{slug!r} is listed twice")
            listed.add(slug)
            if slug not in agents:
                self._entity(f"{path}.agents[{j}]", slug, "agent")
        if rule.weights is None:
            return
        if rule.strategy != "weighted":
            self.err(f"{path}.weights", "weights are only used with strategy: weighted")
            return
        for slug in rule.weights:
            if rule.all_connected:
                if slug not in agents:
                    self._entity(f"{path}.weights.{slug}", slug, "agent")
            elif slug not in listed:
                self.err(f"{path}.weights.{slug}", f"{slug!r} is not one of the rule's agents")

    def _secrets(self) -> None:
        """Every ``..._env`` is set, and no secret is given twice (each is a unique hash in the database)."""
        seen: dict[tuple[str, str], str] = {}

        def check(path: str, group: str, value: SecretStr | None, env: str | None) -> None:
            if env is not None:
                path = f"{path}_env" if not path.endswith("]") else f"{path}.key_env"
                raw = os.environ.get(env)
                if raw is None:
                    self.err(path, f"environment variable {env!r} is not set")
                    return
                if not raw.strip():
                    self.err(path, f"environment variable {env!r} is empty")
                    return
                secret = raw
            elif value is not None:
                secret = value.get_secret_value()
            else:
                return
            if (group, secret) in seen:
                self.err(path, f"the same secret is given at {seen[group, secret]}")
            else:
                seen[group, secret] = path

        for i, k in _items(self.data, "intake_keys", _KEY):
            check(f"intake_keys[{i}]", "intake key", k.key, k.key_env)
        for i, u in self.users:
            check(f"users[{i}].token", "token", u.token, u.token_env)
        for i, c in _items(self.data, "api_connections", _CONNECTION):
            check(f"api_connections[{i}].key", "connection key", c.key, c.key_env)
        sms = self.data.get("sms")
        if isinstance(sms, dict):
            try:
                spec = _SMS.validate_python(sms)
            except ValidationError:
                return
            for j, env in enumerate(spec.auth_tokens_env):
                if not os.environ.get(env, "").strip():
                    self.err(f"sms.auth_tokens_env[{j}]", f"environment variable {env!r} is not set")

    def _webhooks(self) -> None:
        first: dict[str, str] = {}
        for i, w in _items(self.data, "webhooks", _WEBHOOK):
            if w.id in first:
                self.err(f"webhooks[{i}].id", f"duplicate id {w.id!r}, first used at {first[w.id]}")
            first.setdefault(w.id, f"webhooks[{i}]")
            for j, env in enumerate(w.secrets_env):
                raw = os.environ.get(env, "").strip()
                if not raw:
                    self.err(f"webhooks[{i}].secrets_env[{j}]", f"environment variable {env!r} is not set")
                    continue
                try:
                    _webhook_secret(SecretStr(raw))
                except ValueError as exc:
                    self.err(f"webhooks[{i}].secrets_env[{j}]", f"environment variable {env!r}: {exc}")


def _resolve_secrets(spec: OrgSpec) -> OrgSpec:
    """Copy the values of ``..._env`` variables into ``key``/``token`` (checked set by _CrossCheck)."""

    def read(env: str | None, value: SecretStr | None) -> SecretStr | None:
        return SecretStr(os.environ[env]) if env is not None else value

    return spec.model_copy(
        update={
            "intake_keys": [k.model_copy(update={"key": read(k.key_env, k.key)}) for k in spec.intake_keys],
            "users": [u.model_copy(update={"token": read(u.token_env, u.token)}) for u in spec.users],
            "api_connections": [c.model_copy(update={"key": read(c.key_env, c.key)}) for c in spec.api_connections],
        }
    )
