"""O1-O4, O9: who owns a registration, and whose routing assigns it, from the page it came from."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.entities import EntityRef, Kind
from rules.ownership import Ownership, Unclaimed, candidate_hosts, decide_site_owner, host_of, owner_for_entity

PROPERTY = settings(database=None, max_examples=200)

COMPANY = EntityRef(1, "kv-realty", Kind.COMPANY, "KV Realty")
OFFICE = EntityRef(2, "downtown", Kind.OFFICE, "Downtown office", parent=COMPANY)
LONE_OFFICE = EntityRef(3, "uptown", Kind.OFFICE, "Uptown office")
TEAM = EntityRef(4, "harbor-team", Kind.TEAM, "Harbor team")
JANE = EntityRef(5, "jane", Kind.AGENT, "Jane Doe")

CLAIMS = {
    "kvrealty.com": COMPANY,
    "downtown.kvrealty.com": OFFICE,
    "jane.kvrealty.com": JANE,
    "harborhomes.com": TEAM,
    "uptownliving.com": LONE_OFFICE,
}


def owned(page_url: str) -> Ownership:
    decision = decide_site_owner(page_url, CLAIMS)
    assert isinstance(decision, Ownership), decision
    return decision


# --- host_of -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("page_url", "host"),
    [
        ("https://jane.kvrealty.com/listings/1", "jane.kvrealty.com"),
        ("https://jane.kvrealty.com:8443/listings/1", "jane.kvrealty.com"),
        ("HTTPS://Jane.KVRealty.COM/Listings", "jane.kvrealty.com"),
        ("https://jane.kvrealty.com./", "jane.kvrealty.com"),
        ("https://JANE.kvrealty.com.:8443/x?y=1#z", "jane.kvrealty.com"),
        ("http://user:secret@jane.kvrealty.com/", "jane.kvrealty.com"),
        ("  https://jane.kvrealty.com/  ", "jane.kvrealty.com"),
    ],
    ids=["plain", "port", "uppercase", "trailing-dot", "all-at-once", "userinfo", "padded"],
)
def test_O1_host_of_a_page_url_is_its_bare_lower_case_host(page_url: str, host: str) -> None:
    assert host_of(page_url) == host


@pytest.mark.parametrize(
    "page_url",
    [
        "jane.kvrealty.com",
        "jane.kvrealty.com/listings/1",
        "Jane.KVRealty.com.:8080/listings",
        "jane.kvrealty.com/signup?next=https://jane.kvrealty.com/thanks",
        "//jane.kvrealty.com/listings/1",
    ],
    ids=["bare-host", "path", "port-uppercase-dot", "url-in-query", "protocol-relative"],
)
def test_O1_host_of_a_page_url_without_a_scheme_is_still_its_host(page_url: str) -> None:
    assert host_of(page_url) == "jane.kvrealty.com"


@pytest.mark.parametrize("page_url", ["", "   ", "https://", "/listings/1"])
def test_O9_host_of_a_url_without_a_host_is_empty(page_url: str) -> None:
    assert host_of(page_url) == ""


# --- candidate_hosts ---------------------------------------------------------------------------


def test_O1_candidate_hosts_are_most_specific_first() -> None:
    assert candidate_hosts("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com"]


def test_O1_candidate_hosts_never_include_a_bare_tld() -> None:
    assert "com" not in candidate_hosts("jane.kvrealty.com")


def test_O1_candidate_hosts_of_a_single_label_host_is_that_host() -> None:
    assert candidate_hosts("localhost") == ["localhost"]


def test_O9_candidate_hosts_of_no_host_is_empty() -> None:
    assert candidate_hosts("") == []


@PROPERTY
@given(
    st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=10), min_size=2, max_size=6)
)
def test_O1_candidate_hosts_drop_one_leading_label_at_a_time(labels: list[str]) -> None:
    host = ".".join(labels)
    candidates = candidate_hosts(host)
    assert candidates[0] == host
    assert candidates[-1] == ".".join(labels[-2:])
    assert len(candidates) == len(labels) - 1
    for more, less in itertools.pairwise(candidates):
        assert more.endswith("." + less)


# --- owner_for_entity ---------------------------------------------------------------------------


def test_O2_agent_entity_owns_and_is_assigned() -> None:
    decision = owner_for_entity(JANE, "site jane.kvrealty.com")
    assert (decision.owner, decision.routing_entity, decision.assignee, decision.rule) == (JANE, None, JANE, "O2")
    assert "site jane.kvrealty.com" in decision.reason


def test_O3_company_entity_owns_and_routes() -> None:
    decision = owner_for_entity(COMPANY, "site kvrealty.com")
    assert (decision.owner, decision.routing_entity, decision.assignee, decision.rule) == (COMPANY, COMPANY, None, "O3")


def test_O3_office_entity_gives_ownership_to_its_company_and_routes_itself() -> None:
    decision = owner_for_entity(OFFICE, "landing page downtown.kvrealty.com")
    assert (decision.owner, decision.routing_entity, decision.assignee, decision.rule) == (COMPANY, OFFICE, None, "O3")
    assert "kv-realty" in decision.reason
    assert "downtown" in decision.reason


def test_O3_office_without_a_company_owns_its_own_site_leads() -> None:
    decision = owner_for_entity(LONE_OFFICE, "site uptownliving.com")
    assert (decision.owner, decision.routing_entity, decision.assignee, decision.rule) == (
        LONE_OFFICE,
        LONE_OFFICE,
        None,
        "O3",
    )


def test_O4_team_entity_owns_and_routes() -> None:
    decision = owner_for_entity(TEAM, "squeeze page harborhomes.com")
    assert (decision.owner, decision.routing_entity, decision.assignee, decision.rule) == (TEAM, TEAM, None, "O4")


# --- decide_site_owner ---------------------------------------------------------------------------


def test_O2_agent_subdomain_owns_and_assigns() -> None:
    decision = owned("https://jane.kvrealty.com/homes/12-elm-st")
    assert decision.owner == JANE
    assert decision.assignee == JANE
    assert decision.routing_entity is None
    assert decision.rule == "O2"


def test_O2_squeeze_page_on_an_agent_site_is_the_agents() -> None:
    assert owned("https://www.jane.kvrealty.com/free-home-valuation?utm_source=fb").owner == JANE


def test_O1_most_specific_claimed_domain_wins() -> None:
    # kvrealty.com (the company) also covers jane.kvrealty.com; Jane's own claim is more specific.
    assert owned("https://jane.kvrealty.com/").owner == JANE
    assert owned("https://www.kvrealty.com/").owner == COMPANY


def test_O3_company_site_is_company_owned_and_company_routed() -> None:
    decision = owned("https://kvrealty.com/search")
    assert (decision.owner, decision.routing_entity, decision.assignee) == (COMPANY, COMPANY, None)
    assert decision.rule == "O3"


def test_O3_office_site_is_company_owned_and_routed_by_office() -> None:
    decision = owned("https://downtown.kvrealty.com/landing/spring-open-house")
    assert decision.owner == COMPANY
    assert decision.routing_entity == OFFICE
    assert decision.assignee is None
    assert decision.rule == "O3"


def test_O4_team_site_is_team_owned_and_team_routed() -> None:
    decision = owned("https://harborhomes.com/squeeze/first-time-buyers")
    assert (decision.owner, decision.routing_entity, decision.assignee) == (TEAM, TEAM, None)
    assert decision.rule == "O4"


def test_O1_ownership_follows_the_host_whatever_its_spelling() -> None:
    assert owned("JANE.KVREALTY.COM.:8080/homes").owner == JANE


def test_O9_unknown_host_is_unclaimed_with_reason() -> None:
    decision = decide_site_owner("https://unknown-brokerage.com/signup", CLAIMS)
    assert isinstance(decision, Unclaimed)
    assert decision.reason.startswith("O9")
    assert "unknown-brokerage.com" in decision.reason


def test_O9_domain_matching_is_by_label_not_by_string_suffix() -> None:
    # notkvrealty.com ends with "kvrealty.com" as a string but is not a subdomain of it.
    assert isinstance(decide_site_owner("https://notkvrealty.com/", CLAIMS), Unclaimed)


def test_O9_a_claimed_tld_claims_nothing() -> None:
    assert isinstance(decide_site_owner("https://kvrealty.com/", {"com": COMPANY}), Unclaimed)


@pytest.mark.parametrize("page_url", ["", "   ", "https://", "/signup"])
def test_O9_page_url_without_a_host_is_unclaimed_with_reason(page_url: str) -> None:
    decision = decide_site_owner(page_url, CLAIMS)
    assert isinstance(decision, Unclaimed)
    assert "no host" in decision.reason


def test_O9_no_claims_at_all_leaves_every_site_unclaimed() -> None:
    assert isinstance(decide_site_owner("https://kvrealty.com/", {}), Unclaimed)
