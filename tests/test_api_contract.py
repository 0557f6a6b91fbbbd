"""Contract: every operation of /openapi.json, fed generated requests, never answers with a server
error (only the documented 503 when a backing service fails) and always answers as documented.
In process (ASGI), a bounded number of examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_api_helpers import new_key

from api.app import create_app
from api.services import ApiOptions
from sinks.kafka import ensure_topics

EXAMPLES = 25  # per operation and generation mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.mark.integration
def test_every_operation_answers_as_documented_and_never_500(settings):
    ensure_topics(settings)
    _, key = new_key(settings, "acme")  # a tenant key: sends events; the backfills answer 403
    app = create_app(settings, ApiOptions(rate=1e6, burst=1e6))
    # the live tail never ends by itself: it is exercised over a real socket in test_api_server
    schema = schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path="/v1/events/stream")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 23

    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):  # valid, then invalid input
        for operation in operations:
            _fuzz(operation, mode, key)


def _fuzz(operation, mode: GenerationMode, key: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)

    check()
