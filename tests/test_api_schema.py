"""schemathesis over the app's OpenAPI, against the running API and the real services.

Every operation of ``/openapi.json`` is called with generated inputs, as an
admin, on a real uvicorn server backed by PostgreSQL, Redis and NATS (the
``access_api`` fixture). Checked by schemathesis for each response: no 5xx,
status code, content type and body conform to the documented schema. The
SSE streams are left out: a valid request opens a stream that never ends (their
refusals and contents are tested in tests/test_api_stream.py). Not checked:
"schema-valid data is accepted": some constraints span fields and are not
expressible in OpenAPI (``since`` before ``until``; a silence needs ``ends_at``
or a duration), and their 400/422 is the right answer. Examples per
operation are limited to keep the run short; the seed is fixed (printed by
Hypothesis on failure) so a failure replays.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from tests.fix_access import Keys

pytestmark = pytest.mark.integration


def test_every_operation_conforms_to_its_schema_and_never_5xx(access_api: str, keys: Keys) -> None:
    schema = schemathesis.openapi.from_url(f"{access_api}/openapi.json").exclude(
        path_regex=r"^/v1/stream/"
    )
    headers = keys.headers("admin")
    failures: dict[str, str] = {}
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        checked.append(operation.label)

        @given(case=operation.as_strategy())
        @seed(1105)
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(
                headers=headers, timeout=30, excluded_checks=[positive_data_acceptance]
            )

        try:
            run()
        except (Exception, FailureGroup) as e:  # collected: every operation still runs
            failures[operation.label] = str(e)[:2000]
    assert "POST /v1/events" in checked and "GET /v1/audit" in checked, checked
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


async def test_a_nul_in_a_query_parameter_or_path_is_a_400_naming_it(
    http: httpx.AsyncClient, keys: Keys
) -> None:
    h = keys.headers("admin")
    for path, field in [
        ("/v1/alerts?rule=a%00b", "rule"),  # was a 500 (the driver refuses NUL)
        ("/v1/audit?principal=%00", "principal"),
        ("/v1/alerts/x%00y", "path"),
    ]:
        resp = await http.get(path, headers=h)
        assert resp.status_code == 400, (path, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert resp.json()["field"] == field
