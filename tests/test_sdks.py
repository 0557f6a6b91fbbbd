"""The SDKs under sdks/, each running its own test suite against a real `aforo serve` and the
metering flow (tests/sdk_harness.py), then the ledger checked from here: every record of the run
is tier `sdk`, and no event was billed twice however often it was retried."""

from __future__ import annotations

import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from integration import messages
from sdk_harness import run_suite, running_aforo
from test_api_helpers import open_api

from api.routes.events import SDK_HEADER
from flows.metering import run
from sinks.postgres import connect

SDKS = Path(__file__).parent.parent / "sdks"


@pytest.fixture
def aforo(settings, tmp_path):
    with running_aforo(settings, tmp_path / "logs") as served:
        yield served


def _ledger_settled(settings, timeout_s: float = 120) -> list[tuple]:
    """(tier, status, count) once every raw record has its ledger row."""
    deadline = time.monotonic() + timeout_s
    raw = len(messages(settings, (settings.topics.raw,)))  # read to the end: watermarks can lag
    while True:
        with connect(settings.database_url) as conn:
            rows = conn.execute("SELECT count(*) FROM ledger").fetchone()[0]
            if rows >= raw or time.monotonic() > deadline:
                return conn.execute("SELECT tier, status, count(*) FROM ledger GROUP BY 1, 2 ORDER BY 1, 2"
                                    ).fetchall()
        time.sleep(0.5)


def _check_ledger(settings) -> None:
    outcomes = _ledger_settled(settings)
    assert outcomes and {tier for tier, _, _ in outcomes} == {"sdk"}, outcomes
    assert {status for _, status, _ in outcomes} <= {"accepted", "duplicate"}, outcomes
    with connect(settings.database_url) as conn:
        twice = conn.execute("SELECT tenantid, source, event_id FROM ledger WHERE status = 'accepted'"
                             " GROUP BY 1, 2, 3 HAVING count(*) > 1 ORDER BY 1, 2, 3").fetchall()
        retried = conn.execute("SELECT count(*) FROM ledger WHERE status = 'duplicate'").fetchone()[0]
    assert twice == [], "events billed twice"
    assert retried >= 1  # each suite forces a retry of events Aforo had already taken


@pytest.mark.integration
def test_the_sdk_header_records_tier_sdk(settings):
    event = {"specversion": "1.0", "source": "tier-test", "type": "api.call", "subject": "cust-1",
             "time": datetime.now(UTC).isoformat()}
    for api in open_api(settings):
        auth = api.auth
        assert api.client.post("/v1/events", json={**event, "id": "a"}, headers=auth).status_code == 202
        assert api.client.post("/v1/events", json={**event, "id": "b"},
                               headers={**auth, SDK_HEADER: "go/0.1.0"}).status_code == 202
    run(settings, once=True)
    with connect(settings.database_url) as conn:
        assert conn.execute("SELECT event_id, tier FROM ledger ORDER BY 1").fetchall() == [("a", "rest"),
                                                                                           ("b", "sdk")]


@pytest.mark.integration
def test_python_sdk(aforo):
    run_suite([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], SDKS / "python",
              aforo.suite_env())
    _check_ledger(aforo.settings)


def _toolchain(*commands: str) -> None:
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        pytest.skip(f"!!! {', '.join(missing)} not installed: `make sdk-toolchains` installs it "
                    "(apt, as root); this SDK is NOT tested !!!")


@pytest.mark.integration
def test_node_sdk(aforo):
    _toolchain("node", "npm")
    if not (SDKS / "node" / "node_modules" / "openai").is_dir():
        pytest.skip("!!! the Node SDK's dev dependencies are not installed: `make sdk-toolchains` "
                    "(npm ci); the Node SDK is NOT tested !!!")
    run_suite(["npm", "test", "--silent"], SDKS / "node", aforo.suite_env())
    _check_ledger(aforo.settings)


@pytest.mark.integration
def test_go_sdk(aforo):
    _toolchain("go")
    # Standard library only: no module proxy is reachable, and none is needed.
    run_suite(["go", "test", "-count=1", "./..."], SDKS / "go",
              aforo.suite_env(GOPROXY="off", GOFLAGS="-mod=mod"))
    _check_ledger(aforo.settings)


@pytest.mark.integration
def test_java_sdk(aforo):
    _toolchain("javac", "java", "jar")
    if not Path("/usr/share/java/junit-platform-console-standalone.jar").is_file():
        pytest.skip("!!! JUnit 5 is not installed: `make sdk-toolchains` (Debian's junit5); the Java SDK is "
                    "NOT tested !!!")
    run_suite(["./build.sh", "test"], SDKS / "java", aforo.suite_env())
    _check_ledger(aforo.settings)
