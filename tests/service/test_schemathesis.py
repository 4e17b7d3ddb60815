"""Property-based API testing: schemathesis generates requests from the service's own /openapi.json and checks
every response: no 5xx, and status code, content type, headers and body as documented.

(schemathesis's pytest plugin does not run under this pytest, so the operations are driven with hypothesis here.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.service.live_server import Server

EXAMPLES_PER_OPERATION = 110  # five operations take parameters or bodies: over 500 generated cases in all
# "schema-valid requests are accepted" does not apply: any bytes are a valid binary body, few are an image
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def live_schema(artifacts):
    server = Server(
        [
            {"name": "blockdrop", "artifact": str(artifacts["tiny-blockdrop"]), "mode": "blockdrop"},
            {"name": "full", "artifact": str(artifacts["tiny-resnet"]), "mode": "full"},
        ]
    )
    yield schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    server.stop()


def test_generated_requests_conform(live_schema):
    operations = [result.ok() for result in live_schema.get_all_operations()]
    assert len(operations) >= 12
    generated = {"cases": 0}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            generated["cases"] += 1
            case.call_and_validate(checks=CHECKS)

        check()
    assert generated["cases"] >= 500
