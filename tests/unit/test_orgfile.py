"""The org file (docs/org-file.md): what parses, and how every mistake is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from intake.orgfile import load_org_file
from models.orgspec import AgentSpec, OfficeSpec, OrgFileError, WhenSpec, parse_org
from rules.routing import CONDITION_KEYS

DEMO_ORG = Path(__file__).parents[2] / "leadrelay" / "demo" / "org.yaml"


def org(**changes: Any) -> dict[str, Any]:
    """A small valid org file as YAML would read it; each test changes what it is about."""
    data: dict[str, Any] = {
        "account": "demo",
        "name": "Demo Realty",
        "intake_keys": ["site-key-1"],
        "entities": [
            {
                "id": "demo-co",
                "kind": "company",
                "name": "Demo Realty",
                "domains": ["kvcore-demo.com"],
                "smart_numbers": ["+15550100000"],
            },
            {
                "id": "downtown",
                "kind": "office",
                "parent": "demo-co",
                "name": "Downtown",
                "domains": ["downtown.kvcore-demo.com"],
            },
            {"id": "sunrise", "kind": "team", "name": "Sunrise Team", "admins": ["tara"]},
            {
                "id": "john",
                "kind": "agent",
                "name": "John Smith",
                "email": "john@example.com",
                "phone": "+15550101001",
                "office": "downtown",
                "teams": ["sunrise"],
            },
            {"id": "jill", "kind": "agent", "name": "Jill Jones", "office": "downtown"},
            {"id": "tara", "kind": "agent", "name": "Tara Team", "teams": ["sunrise"]},
        ],
        "users": [
            {"id": "olivia", "name": "Olivia Office", "admin_of": ["demo-co"], "token": "olivia-token"},
            {"id": "john", "token": "john-token"},
        ],
        "api_connections": [{"id": "zillow-john", "provider": "zillow", "entity": "john", "key": "zillow-key"}],
        "routing": [
            {
                "entity": "demo-co",
                "rules": [
                    {"name": "Luxury", "when": {"price_min": 1_000_000}, "agents": ["john", "jill"]},
                    {"name": "Default", "agents": "connected"},
                ],
            },
        ],
    }
    data.update(changes)
    return data


def errors_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(OrgFileError) as caught:
        parse_org(data)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return caught.value.errors


# --- what parses -------------------------------------------------------------------------------------


def test_the_demo_org_file_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADRELAY_DEMO_TWILIO_TOKEN", "demo-twilio-token")  # as `leadrelay dev` sets it
    spec = load_org_file(DEMO_ORG)
    assert spec.account == "demo"
    assert spec.duplication is True
    assert [a.id for a in spec.agents] == ["john", "jill", "tara", "bob"]
    assert [r.entity for r in spec.routing] == ["demo-co", "downtown", "sunrise"]


def test_a_good_file_parses_with_defaults() -> None:
    spec = parse_org(org())
    john = spec.agents[0]
    assert (john.active, john.paused, john.private, john.hide_from_team) == (True, False, False, False)
    luxury, default = spec.routing[0].rules
    assert luxury.strategy == "round_robin"
    assert luxury.agent_ids == ["john", "jill"]
    assert luxury.when.conditions() == {"price_min": 1_000_000}
    assert default.all_connected
    assert default.when.conditions() == {}


def test_domains_become_lower_case_hosts_and_numbers_become_e164() -> None:
    data = org()
    data["entities"][0]["domains"] = ["KVCore-Demo.com."]
    data["entities"][0]["smart_numbers"] = ["(555) 010-0000"]
    company = parse_org(data).entities[0]
    assert company.domains == ["kvcore-demo.com"]
    assert company.smart_numbers == ["+15550100000"]


def test_a_user_entry_with_an_agents_id_adds_to_that_agent_and_is_no_duplicate() -> None:
    spec = parse_org(org())
    assert [u.id for u in spec.users] == ["olivia", "john"]
    assert isinstance(spec.entities[3], AgentSpec)
    assert spec.entities[3].id == "john"


def test_an_office_without_a_company_is_allowed() -> None:
    data = org()
    del data["entities"][1]["parent"]
    office = parse_org(data).entities[1]
    assert isinstance(office, OfficeSpec)
    assert office.parent is None


def test_a_token_from_the_environment_is_read_into_the_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOHN_TOKEN", "from-the-environment")
    data = org()
    data["users"][1] = {"id": "john", "token_env": "JOHN_TOKEN"}
    data["intake_keys"] = [{"key_env": "JOHN_TOKEN"}]
    spec = parse_org(data)
    john = spec.users[1]
    assert john.token is not None
    assert john.token.get_secret_value() == "from-the-environment"
    assert spec.intake_keys[0].key is not None
    assert spec.intake_keys[0].key.get_secret_value() == "from-the-environment"


def test_secrets_do_not_show_when_the_spec_is_printed() -> None:
    spec = parse_org(org())
    shown = repr(spec) + spec.model_dump_json()
    for secret in ("olivia-token", "john-token", "zillow-key", "site-key-1"):
        assert secret not in shown


def test_when_takes_exactly_the_conditions_routing_knows() -> None:
    assert tuple(WhenSpec.model_fields) == CONDITION_KEYS


# --- what is refused, and how it is reported ---------------------------------------------------------


def test_an_unknown_office_is_reported_with_its_path_in_the_file() -> None:
    data = org()
    data["entities"][3]["office"] = "dwntown"
    assert errors_of(data) == ["entities[3].office: unknown entity 'dwntown'"]


def test_every_error_is_reported_not_just_the_first() -> None:
    data = org()
    data["entities"][3]["office"] = "dwntown"  # a reference
    data["entities"][4]["kind"] = "agnet"  # a shape
    data["users"][0]["admin_of"] = ["nowhere"]  # a reference in another section
    data["routing"][0]["rules"][0]["strategy"] = "random"  # a value
    assert errors_of(data) == [
        "entities[3].office: unknown entity 'dwntown'",
        "entities[4].kind: must be one of company, office, team, agent",
        "users[0].admin_of[0]: unknown entity 'nowhere'",
        "routing[0].rules[0].strategy: unknown strategy 'random': use one of round_robin, weighted",
    ]


def test_an_entity_with_a_bad_shape_causes_no_follow_on_errors() -> None:
    data = org()
    data["entities"][1]["nmae"] = "Downtown"  # john's office is still known, though invalid
    assert errors_of(data) == ["entities[1].nmae: unknown key (did you mean 'name'?)"]


def test_an_unknown_key_is_rejected_with_its_path() -> None:
    data = org(routnig=[])
    data["entities"][3]["ofice"] = data["entities"][3].pop("office")
    data["routing"][0]["rules"][0]["when"]["price_mni"] = 1
    assert errors_of(data) == [
        "entities[3].ofice: unknown key (did you mean 'office'?)",
        "routing[0].rules[0].when.price_mni: unknown key (did you mean 'price_min'?)",
        "routnig: unknown key (did you mean 'routing'?)",
    ]


def test_a_key_for_another_kind_of_entity_is_unknown() -> None:
    data = org()
    data["entities"][2]["office"] = "downtown"  # teams have no office
    assert errors_of(data) == [
        "entities[2].office: unknown key (expected one of: id, name, domains, smart_numbers, admins, kind)"
    ]


def test_a_missing_environment_variable_is_named_with_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOHN_TOKEN", raising=False)
    data = org()
    data["users"][1] = {"id": "john", "token_env": "JOHN_TOKEN"}
    assert errors_of(data) == ["users[1].token_env: environment variable 'JOHN_TOKEN' is not set"]


def test_a_duplicate_id_is_rejected() -> None:
    data = org()
    data["entities"].append({"id": "jill", "kind": "team", "name": "Jill's Team"})
    data["users"].append({"id": "downtown", "name": "Not An Agent"})
    assert errors_of(data) == [
        "entities[6].id: duplicate id 'jill', first used at entities[4]",
        "users[2].id: duplicate id 'downtown', first used at entities[1] (only an agent's id can also be a user)",
    ]


def test_weights_without_the_weighted_strategy_are_rejected() -> None:
    data = org()
    data["routing"][0]["rules"][0]["weights"] = {"john": 3}
    assert errors_of(data) == ["routing[0].rules[0].weights: weights are only used with strategy: weighted"]


def test_weights_name_the_rules_agents_or_with_connected_any_agent() -> None:
    data = org()
    data["routing"][0]["rules"][0] |= {"strategy": "weighted", "weights": {"john": 3, "tara": 1}}
    data["routing"][0]["rules"][1] |= {"strategy": "weighted", "weights": {"tara": 2, "sunrise": 1}}
    assert errors_of(data) == [
        "routing[0].rules[0].weights.tara: 'tara' is not one of the rule's agents",
        "routing[0].rules[1].weights.sunrise: 'sunrise' is a team, not an agent",
    ]


def test_references_must_name_the_right_kind_of_entity() -> None:
    data = org()
    data["entities"][1]["parent"] = "sunrise"
    data["entities"][3]["teams"] = ["downtown"]
    data["routing"].append({"entity": "john", "rules": []})
    data["routing"][0]["rules"][0]["agents"] = ["john", "downtown", "john"]
    assert errors_of(data) == [
        "entities[1].parent: 'sunrise' is a team, not a company",
        "entities[3].teams[0]: 'downtown' is an office, not a team",
        "routing[0].rules[0].agents[1]: 'downtown' is an office, not an agent",
        "routing[0].rules[0].agents[2]: 'john' is listed twice",
        "routing[1].entity: 'john' is an agent: only companies, offices and teams route leads",
    ]


def test_admins_must_be_users() -> None:
    data = org()
    data["entities"][2]["admins"] = ["tara", "olivia", "ghost"]
    assert errors_of(data) == ["entities[2].admins[2]: unknown user 'ghost' (admins are agents or users)"]


def test_a_domain_or_number_is_given_once_in_the_whole_file() -> None:
    data = org()
    data["entities"][3]["domains"] = ["Downtown.kvcore-demo.com"]
    data["entities"][4]["smart_numbers"] = ["+1 555 010 0000"]
    assert errors_of(data) == [
        "entities[3].domains[0]: domain 'downtown.kvcore-demo.com' is also given at entities[1].domains[0]",
        "entities[4].smart_numbers[0]: smart number '+15550100000' is also given at entities[0].smart_numbers[0]",
    ]


def test_a_domain_is_a_host_without_scheme_or_path() -> None:
    data = org()
    data["entities"][0]["domains"] = ["https://kvcore-demo.com", "kvcore-demo.com/buy", "not a host"]
    assert errors_of(data) == [
        "entities[0].domains[0]: domain 'https://kvcore-demo.com' has a scheme: give the host only, like 'example.com'",
        "entities[0].domains[1]: domain 'kvcore-demo.com/buy' has a path: give the host only, like 'example.com'",
        "entities[0].domains[2]: 'not a host' is not a host name (internationalised names go in their xn-- form)",
    ]


def test_unquoted_phone_numbers_and_zips_are_explained() -> None:
    data = org()
    data["entities"][0]["smart_numbers"] = [15550100000]
    data["routing"][0]["rules"][0]["when"]["zips"] = [2134]
    assert errors_of(data) == [
        "entities[0].smart_numbers[0]: put phone numbers in quotes: YAML reads an unquoted +1555... as a number",
        "routing[0].rules[0].when.zips[0]: put ZIP codes in quotes: YAML reads 02134 as a number",
    ]


def test_agents_is_a_list_or_connected() -> None:
    data = org()
    data["routing"][0]["rules"][1]["agents"] = "conected"
    assert errors_of(data) == [
        "routing[0].rules[1].agents: expected a list of agent ids or 'connected', not 'conected'"
    ]


def test_the_same_secret_given_twice_is_rejected() -> None:
    data = org()
    data["users"][1]["token"] = "olivia-token"
    assert errors_of(data) == ["users[1].token: the same secret is given at users[0].token"]


def test_yaml_mistakes_are_reported_with_line_and_column(tmp_path: Path) -> None:
    repeated = tmp_path / "repeated.yaml"
    repeated.write_text("account: demo\nname: Demo\naccount: other\n")
    broken = tmp_path / "broken.yaml"
    broken.write_text("account: demo\n name: Demo\n")
    with pytest.raises(OrgFileError) as caught:
        load_org_file(repeated)
    assert caught.value.errors == ["line 3, column 1: key 'account' is given twice"]
    with pytest.raises(OrgFileError) as caught:
        load_org_file(broken)
    assert caught.value.errors == ["line 2, column 6: mapping values are not allowed here"]
