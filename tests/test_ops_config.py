"""Operator-facing configuration without services: Kafka client properties from the environment
and a properties file, credentials kept out of reprs and log lines, the JSON log format."""

from __future__ import annotations

import logging

import orjson
import pytest

import config
from config import ConfigError, Settings
from observe import logs, metrics
from sinks.kafka import LIBRDKAFKA_LOG, kafka_config

BASE = {"AFORO_KAFKA_BOOTSTRAP": "k1:9093,k2:9093", "AFORO_DATABASE_URL": "postgresql://db/aforo",
        "AFORO_REDIS_URL": "redis://cache:6379/0"}


def test_kafka_properties_from_environment_apply_per_role():
    s = Settings.from_env({**BASE, "AFORO_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "AFORO_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                           "AFORO_KAFKA_SASL_USERNAME": "aforo", "AFORO_KAFKA_SASL_PASSWORD": "s3cr3t",
                           "AFORO_KAFKA_SSL_CA_LOCATION": "/etc/aforo/ca.pem",
                           "AFORO_KAFKA_CLIENT_ID": "aforo-api", "AFORO_KAFKA_PRODUCER_ACKS": "1",
                           "AFORO_KAFKA_CONSUMER_FETCH_MIN_BYTES": "1024"})
    producer, consumer, admin = (kafka_config(s, r) for r in ("producer", "consumer", "admin"))
    for c in (producer, consumer, admin):
        assert c["bootstrap.servers"] == "k1:9093,k2:9093"
        assert c["security.protocol"] == "SASL_SSL" and c["sasl.mechanism"] == "SCRAM-SHA-512"
        assert c["sasl.username"] == "aforo" and c["sasl.password"] == "s3cr3t"
        assert c["ssl.ca.location"] == "/etc/aforo/ca.pem" and c["client.id"] == "aforo-api"
        assert c["logger"] is LIBRDKAFKA_LOG  # librdkafka never writes to stderr itself
    assert producer["acks"] == "1"  # the operator's producer setting beats Aforo's default acks=all
    assert "acks" not in consumer and "fetch.min.bytes" not in producer
    assert consumer["fetch.min.bytes"] == "1024"
    # a caller's explicit override still wins (a per-use setting such as a group id)
    assert kafka_config(s, "consumer", group_id="g", fetch_min_bytes=1)["fetch.min.bytes"] == 1


def test_oauthbearer_and_a_properties_file(tmp_path):
    path = tmp_path / "client.properties"
    path.write_text("# Confluent Cloud\nsecurity.protocol=SASL_SSL\nsasl.mechanism = OAUTHBEARER\n"
                    "sasl.oauthbearer.method=oidc\nsasl.oauthbearer.client.id=aforo\n"
                    "sasl.oauthbearer.client.secret=tok=en\n"
                    "sasl.oauthbearer.token.endpoint.url=https://idp.example/token\n"
                    "producer.compression.type=zstd\n\n")
    s = Settings.from_env({**BASE, "AFORO_KAFKA_CONFIG": str(path),
                           "AFORO_KAFKA_SASL_OAUTHBEARER_CLIENT_ID": "from-env"})
    c = kafka_config(s, "producer")
    assert c["sasl.mechanism"] == "OAUTHBEARER" and c["sasl.oauthbearer.method"] == "oidc"
    assert c["sasl.oauthbearer.client.secret"] == "tok=en"  # only the first = separates
    assert c["sasl.oauthbearer.client.id"] == "from-env"  # the environment beats the file
    assert c["compression.type"] == "zstd" and "compression.type" not in kafka_config(s, "consumer")
    # a child process (CLI run, test worker) gets the same properties
    assert kafka_config(Settings.from_env(s.to_env()), "producer") == c


@pytest.mark.parametrize(("env", "message"), [
    ({"AFORO_KAFKA_CONFIG": "/nonexistent/kafka.properties"}, "cannot read /nonexistent/kafka.properties"),
    ({"AFORO_KAFKA_BOOTSTRAP_SERVERS": "x:1"}, "AFORO_KAFKA_BOOTSTRAP"),
    ({"AFORO_LOG_LEVEL": "loud"}, "AFORO_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR"),
    ({"AFORO_LOG_FORMAT": "xml"}, "AFORO_LOG_FORMAT must be one of json, text"),
])
def test_bad_settings_name_the_setting(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_bad_properties_file_line(tmp_path):
    path = tmp_path / "k.properties"
    path.write_text("security.protocol=SSL\nthis line has no equals sign\n")
    with pytest.raises(ConfigError, match=r"k.properties:2: expected key=value"):
        Settings.from_env({"AFORO_KAFKA_CONFIG": str(path)})


def test_credentials_never_in_repr():
    s = Settings.from_env({**BASE, "AFORO_KAFKA_SASL_PASSWORD": "kafkapw", "AFORO_SECRET": "hmacsecret",
                           "AFORO_DATABASE_URL": "postgresql://aforo:dbpw@db:5432/aforo?sslmode=verify-full",
                           "AFORO_REDIS_URL": "rediss://:redispw@cache:6380/0"})
    shown = repr(s)
    for secret in ("kafkapw", "hmacsecret", "dbpw", "redispw"):
        assert secret not in shown
    assert "postgresql://aforo:***@db:5432/aforo?sslmode=verify-full" in shown
    assert sorted(s.secrets()) == ["dbpw", "hmacsecret", "kafkapw", "redispw"]
    assert config.redact_url("redis://cache:6379/0") == "redis://cache:6379/0"


def _remove_ours() -> None:
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "aforo", False)]:
        root.removeHandler(h)


def test_json_lines_with_credentials_masked_everywhere(capsys):
    s = Settings.from_env({**BASE, "AFORO_KAFKA_SASL_PASSWORD": 'pw"with quote', "AFORO_SECRET": "hmacsecret",
                           "AFORO_LOG_LEVEL": "debug"})
    logs.configure(s, service=True)
    try:
        log = logging.getLogger("aforo.test")
        log.info("connecting with %s", 'pw"with quote', extra={"tenant": "acme"})
        try:
            raise RuntimeError("bad secret hmacsecret")
        except RuntimeError:
            log.exception("failed")
        log.debug("debug is on")
    finally:
        _remove_ours()
    err = capsys.readouterr().err
    lines = [orjson.loads(line) for line in err.splitlines()]
    assert [(x["level"], x["logger"]) for x in lines] == [("INFO", "aforo.test"), ("ERROR", "aforo.test"),
                                                          ("DEBUG", "aforo.test")]
    assert lines[0]["message"] == "connecting with ***" and lines[0]["tenant"] == "acme"
    assert lines[0]["time"].endswith("+00:00")
    assert "hmacsecret" not in err and "with quote" not in err
    assert "RuntimeError: bad secret ***" in lines[1]["exc_info"]


def test_commands_log_plain_text_at_warning_by_default(capsys):
    logs.configure(Settings.from_env(BASE), service=False)
    try:
        logging.getLogger("aforo.test").info("not shown")
        logging.getLogger("aforo.test").warning("shown")
    finally:
        _remove_ours()
    assert capsys.readouterr().err == "WARNING aforo.test: shown\n"


def test_librdkafka_repeats_are_collapsed():
    now = [0.0]
    f = logs.RepeatFilter(window_s=60, clock=lambda: now[0])

    def passes(msg: str) -> str | None:
        record = logging.LogRecord("aforo.librdkafka", logging.ERROR, __file__, 1, msg, None, None)
        return record.getMessage() if f.filter(record) else None

    assert passes("FAIL connect refused") == "FAIL connect refused"
    assert [passes("FAIL connect refused") for _ in range(194)] == [None] * 194
    assert passes("other") == "other"
    now[0] = 61.0
    assert passes("FAIL connect refused") == "FAIL connect refused (repeated 194 times)"
    assert passes("FAIL connect refused") is None


def test_tenant_labels_stay_bounded():
    metrics.known_tenants(["acme", "globex"])
    before = _sample("aforo_records_total", tenant="_other", status="rejected", reason="unknown_tenant") or 0
    metrics.records_decided([("acme", "accepted", None), ("acme", "accepted", None),
                             ("evil-1", "rejected", "unknown_tenant"),
                             ("evil-2", "rejected", "unknown_tenant"), (None, "rejected", "malformed")])
    assert _sample("aforo_records_total", tenant="_other", status="rejected",
                   reason="unknown_tenant") == before + 2
    assert _sample("aforo_records_total", tenant="evil-1", status="rejected", reason="unknown_tenant") is None


def test_ledger_write_timing_counts_failures_by_class():
    before = _sample("aforo_ledger_write_errors_total", error="OperationalError") or 0
    batches = _sample("aforo_ledger_batch_records_count") or 0

    class OperationalError(Exception):
        pass

    with pytest.raises(OperationalError), metrics.ledger_write(500):
        raise OperationalError("server closed the connection")
    with metrics.ledger_write(500):
        pass
    assert _sample("aforo_ledger_write_errors_total", error="OperationalError") == before + 1
    assert _sample("aforo_ledger_batch_records_count") == batches + 1


def _sample(name: str, **labels: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(name, labels)
