"""A client generated from the live server's /openapi.json by ``openapi-python-client``, as a brokerage's
developers would make one: every operation in it, no warning, and it works the lead's path end to end
against the running API (register, follow the intake to its lead, read the lead and its timeline, transfer)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from tests.support.client import Brokerage
from tests.support.processes import wait_for

pytestmark = pytest.mark.integration

PACKAGE = "leadrelay_client"


@pytest.fixture(scope="module")
def generated(api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, Any]]]:
    """The client package, generated into a temporary directory from the document the server serves; the
    generator's output; the document."""
    folder = tmp_path_factory.mktemp("client")
    response = httpx.get(f"{api}/openapi.json", timeout=30)
    assert response.status_code == 200, response.text
    (folder / "openapi.json").write_text(response.text, encoding="utf-8")
    (folder / "config.yml").write_text(f"package_name_override: {PACKAGE}\nproject_name_override: {PACKAGE}\n")
    bin_dir = Path(sys.executable).parent  # the generator's post hooks run ruff, installed beside it
    run = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            str(folder / "openapi.json"),
            "--config",
            str(folder / "config.yml"),
            "--output-path",
            str(folder / PACKAGE),
            "--meta",
            "none",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(folder)},
        check=False,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    sys.path.insert(0, str(folder))
    try:
        yield folder / PACKAGE, output, response.json()
    finally:
        sys.path.remove(str(folder))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def test_the_generated_client_has_every_operation_and_no_warning(generated: tuple[Path, str, dict[str, Any]]) -> None:
    """``openapi-python-client`` generates a function for every operation of the document, and says nothing
    is wrong with it (it dropped the provider route over a ``$ref`` it could not find)."""
    package, output, document = generated
    assert "warning" not in output.lower(), output
    assert "error" not in output.lower(), output
    operation_ids = {
        _snake(operation["operationId"]) for item in document["paths"].values() for operation in item.values()
    }
    assert len(operation_ids) == 39
    modules = {path.stem for path in (package / "api").rglob("*.py") if path.stem != "__init__"}
    assert sorted(operation_ids - modules) == []


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"{PACKAGE}.{name}")


def test_the_generated_client_registers_follows_reads_and_transfers_a_lead(
    generated: tuple[Path, str, dict[str, Any]], brokerage_factory: Any
) -> None:
    """Against the running API, with the account's intake key and its admin's token, through the generated
    functions and models only."""
    b: Brokerage = brokerage_factory()
    client = _module("client")
    models = _module("models")
    with (
        client.AuthenticatedClient(base_url=b.base, token=f"key-{b.s}") as site,
        client.AuthenticatedClient(base_url=b.base, token=f"tok-olivia-{b.s}") as admin,
    ):
        _work_a_lead(b, models, site, admin)


def _work_a_lead(b: Brokerage, models: ModuleType, site: Any, admin: Any) -> None:
    body = models.RegistrationIn(page_url=f"https://{b.host('co')}/listings/42", email="gen@example.com")
    body.first_name = "Gen"
    accepted = _module("api.intake.post_registration").sync(client=site, body=body)
    assert isinstance(accepted, models.Accepted), accepted
    assert accepted.status_url.endswith(f"/v1/intake/{accepted.intake_id}")

    get_intake = _module("api.intake.get_intake")
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen["intake"] = get_intake.sync(client=site, intake_id=accepted.intake_id)
        return str(seen["intake"].status) == "done"

    wait_for(done, timeout=60, interval=0.1, what="the intake to be done")
    lead_id = seen["intake"].lead_id

    lead = _module("api.leads.get_lead").sync(client=admin, lead_id=lead_id)
    assert isinstance(lead, models.LeadOut), lead
    assert (lead.email, lead.first_name, lead.owner.id) == ("gen@example.com", "Gen", "co")

    timeline = _module("api.leads.get_timeline").sync(client=admin, lead_id=lead_id)
    assert isinstance(timeline, models.TimelinePage), timeline
    assert timeline.items, "the lead's timeline has its creation"

    moved = _module("api.working_the_leads.transfer_lead").sync(
        client=admin, lead_id=lead_id, body=models.TransferIn(to="sunrise")
    )
    assert isinstance(moved, models.LeadOut), moved
    assert moved.owner.id == "sunrise"

    missing = _module("api.leads.get_timeline").sync_detailed(
        client=admin, lead_id="00000000-0000-4000-8000-000000000000"
    )
    assert missing.status_code == 404
    assert isinstance(missing.parsed, models.Problem), missing.parsed
