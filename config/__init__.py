"""The one settings object. No other module reads the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from schemas.errors import AforoError, Unavailable


class NotConfigured(Unavailable):
    """A service has no URL: neither an environment variable nor a running embedded stack."""

    code = "not_configured"


@dataclass(frozen=True)
class Topics:
    raw: str
    enriched: str
    rejected: str
    held: str

    @property
    def outputs(self) -> tuple[str, str, str]:
        return (self.enriched, self.rejected, self.held)


KAFKA_ROLES = ("producer", "consumer", "admin")
_KAFKA_ENV = "AFORO_KAFKA_"
_KAFKA_RESERVED = {"AFORO_KAFKA_BOOTSTRAP", "AFORO_KAFKA_CONFIG"}
# librdkafka properties whose values are credentials: never printed, never logged
_SECRET_WORDS = ("password", "secret", "key.pem", "oauthbearer.config", "sasl.jaas")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("json", "text")


class ConfigError(AforoError, ValueError):
    """A setting has a value Aforo cannot use; the message names the setting."""

    exit_code = 2
    code = "bad_configuration"


def is_secret_property(name: str) -> bool:
    return any(word in name for word in _SECRET_WORDS)


def _read_properties(path: str) -> dict[str, str]:
    """A Kafka client properties file (`key=value` per line, `#` comments), as librdkafka's and
    Kafka's own tools read it. A key may start with `producer.`, `consumer.` or `admin.` to apply
    to that kind of client only."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"AFORO_KAFKA_CONFIG: cannot read {path}: {exc.strerror}") from None
    props = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"AFORO_KAFKA_CONFIG {path}:{n}: expected key=value")
        props[key.strip()] = value.strip()
    return props


def _kafka_properties(env: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """librdkafka properties from the file named by AFORO_KAFKA_CONFIG, then from AFORO_KAFKA_*
    variables (which win): AFORO_KAFKA_SASL_MECHANISM sets sasl.mechanism for every client,
    AFORO_KAFKA_PRODUCER_ACKS sets acks for producers only. No librdkafka property settable as
    a string has an underscore in its name, so `_` always stands for `.`."""
    props = _read_properties(env["AFORO_KAFKA_CONFIG"]) if env.get("AFORO_KAFKA_CONFIG") else {}
    for name, value in sorted(env.items()):
        if name.startswith(_KAFKA_ENV) and name not in _KAFKA_RESERVED:
            props[name[len(_KAFKA_ENV):].lower().replace("_", ".")] = value
    for key in props:
        if key.split(".", 1)[-1] == "bootstrap.servers" or key == "bootstrap.servers":
            raise ConfigError("set the Kafka bootstrap servers with AFORO_KAFKA_BOOTSTRAP")
    return tuple(sorted(props.items()))


def _choice(env: dict[str, str], name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    """One of `choices`, matched case-insensitively."""
    raw = env.get(name)
    if not raw:
        return default
    value = next((c for c in choices if c.lower() == raw.lower()), None)
    if value is None:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def redact_url(url: str | None) -> str | None:
    """The URL with its password (if any) replaced by ***, for showing and logging."""
    if not url:
        return url
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(":" + parts.password + "@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@dataclass(frozen=True, repr=False)
class Settings:
    home: Path
    kafka_bootstrap_env: str | None = None
    database_url_env: str | None = None
    redis_url_env: str | None = None
    topic_prefix: str = "aforo"
    raw_partitions: int = 8
    secret_env: str | None = None
    webhook_key_env: str | None = None
    recovery_dir_env: str | None = None
    embedded_kafka_port: int = 19092
    embedded_postgres_port: int = 15432
    embedded_redis_port: int = 16379
    epoch_interval_s: float = 2.0
    dedup_buckets: int = 16
    batch_size: int = 2000
    actor: str = "unknown"  # who reconciliation decisions are recorded as
    # topics Aforo creates get this many replicas; -1 leaves it to the broker's default
    replication_factor: int = -1
    log_level: str | None = None  # unset: INFO for services, WARNING for commands (observe.logs)
    log_format_env: str | None = None  # json or text; unset: json for services, text for commands
    kafka_config_file: str | None = None
    metrics_host: str = "127.0.0.1"  # where --metrics-port listens; 0.0.0.0 in containers
    # (name, value) pairs; a name may start with producer., consumer. or admin. (see kafka_config)
    kafka_properties: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = dict(os.environ if env is None else env)
        return cls(
            home=Path(e.get("AFORO_HOME") or ".aforo").absolute(),
            kafka_bootstrap_env=e.get("AFORO_KAFKA_BOOTSTRAP") or None,
            database_url_env=e.get("AFORO_DATABASE_URL") or None,
            redis_url_env=e.get("AFORO_REDIS_URL") or None,
            topic_prefix=e.get("AFORO_TOPIC_PREFIX") or "aforo",
            raw_partitions=_int(e, "AFORO_RAW_PARTITIONS", 8),
            secret_env=e.get("AFORO_SECRET") or None,
            webhook_key_env=e.get("AFORO_WEBHOOK_KEY") or None,
            recovery_dir_env=e.get("AFORO_RECOVERY_DIR") or None,
            embedded_kafka_port=_int(e, "AFORO_EMBEDDED_KAFKA_PORT", 19092),
            embedded_postgres_port=_int(e, "AFORO_EMBEDDED_POSTGRES_PORT", 15432),
            embedded_redis_port=_int(e, "AFORO_EMBEDDED_REDIS_PORT", 16379),
            epoch_interval_s=float(e.get("AFORO_EPOCH_INTERVAL") or 2.0),
            dedup_buckets=_int(e, "AFORO_DEDUP_BUCKETS", 16),
            batch_size=_int(e, "AFORO_BATCH_SIZE", 2000),
            actor=e.get("AFORO_ACTOR") or e.get("USER") or "unknown",
            replication_factor=_int(e, "AFORO_REPLICATION_FACTOR", -1),
            log_level=_choice(e, "AFORO_LOG_LEVEL", LOG_LEVELS, None),
            log_format_env=_choice(e, "AFORO_LOG_FORMAT", LOG_FORMATS, None),
            kafka_config_file=e.get("AFORO_KAFKA_CONFIG") or None,
            metrics_host=e.get("AFORO_METRICS_HOST") or "127.0.0.1",
            kafka_properties=_kafka_properties(e),
        )

    def __repr__(self) -> str:
        """Never shows a credential: URL passwords and the secret are masked, Kafka properties left out."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("database_url_env", "redis_url_env"):
                value = redact_url(value)
            elif f.name == "secret_env" and value:
                value = "***"
            elif not f.repr:
                continue
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def to_env(self) -> dict[str, str]:
        """The environment variables that give a child process (a CLI run, a test or bench
        worker) this same installation: the inverse of from_env, with URLs resolved."""
        return {"AFORO_HOME": str(self.home), "AFORO_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "AFORO_DATABASE_URL": self.database_url, "AFORO_REDIS_URL": self.redis_url,
                "AFORO_TOPIC_PREFIX": self.topic_prefix, "AFORO_SECRET": self.secret_env or "",
                "AFORO_WEBHOOK_KEY": self.webhook_key_env or "",
                "AFORO_EPOCH_INTERVAL": str(self.epoch_interval_s),
                "AFORO_BATCH_SIZE": str(self.batch_size), "AFORO_RAW_PARTITIONS": str(self.raw_partitions),
                "AFORO_REPLICATION_FACTOR": str(self.replication_factor),
                "AFORO_METRICS_HOST": self.metrics_host,
                **({"AFORO_LOG_LEVEL": self.log_level} if self.log_level else {}),
                **({"AFORO_LOG_FORMAT": self.log_format_env} if self.log_format_env else {}),
                **{_KAFKA_ENV + k.upper().replace(".", "_"): v for k, v in self.kafka_properties}}

    # --- Kafka client properties ---------------------------------------------------------
    def kafka_properties_for(self, role: str) -> dict[str, str]:
        """The configured librdkafka properties for one kind of client: the common ones, then
        those given for its role (`producer.acks=1` beats `acks=all` for producers)."""
        common = {k: v for k, v in self.kafka_properties if k.split(".", 1)[0] not in KAFKA_ROLES}
        own = {k.split(".", 1)[1]: v for k, v in self.kafka_properties if k.startswith(role + ".")}
        return {**common, **own}

    def secrets(self) -> list[str]:
        """Every credential value this installation holds, for redacting logs."""
        found = [v for k, v in self.kafka_properties if is_secret_property(k) and v]
        for url in (self.database_url_env, self.redis_url_env):
            password = urlsplit(url).password if url else None
            if password:
                found.append(password)
        if self.secret_env:
            found.append(self.secret_env)
        return found

    # --- topics -------------------------------------------------------------------------
    @property
    def topics(self) -> Topics:
        p = self.topic_prefix
        return Topics(f"{p}.events.raw", f"{p}.events.enriched",
                      f"{p}.events.rejected", f"{p}.events.held")

    # --- service URLs: environment first, else the embedded stack's state file --------------
    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def external(self) -> bool:
        """True when every service is given by URL, so `aforo up` has nothing to start."""
        return bool(self.kafka_bootstrap_env and self.database_url_env and self.redis_url_env)

    def _embedded_url(self, service: str, env_name: str) -> str:
        try:
            urls = orjson.loads(self.stack_file.read_bytes()).get("urls", {})
        except FileNotFoundError:
            urls = {}
        url = urls.get(service)
        if not url:
            raise NotConfigured(
                f"no {service} configured: set {env_name}, or start the embedded stack "
                f"with `aforo up` (AFORO_HOME={self.home})")
        return url

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_env or self._embedded_url("kafka", "AFORO_KAFKA_BOOTSTRAP")

    @property
    def database_url(self) -> str:
        return self.database_url_env or self._embedded_url("postgres", "AFORO_DATABASE_URL")

    @property
    def redis_url(self) -> str:
        return self.redis_url_env or self._embedded_url("redis", "AFORO_REDIS_URL")

    @property
    def recovery_dir(self) -> Path:
        return Path(self.recovery_dir_env) if self.recovery_dir_env else self.home / "recovery"

    @property
    def secret(self) -> bytes:
        """Server secret for validation hashes. Persisted under AFORO_HOME when not given,
        so hashes stay verifiable across restarts of a local stack."""
        if self.secret_env:
            return self.secret_env.encode()
        return kept_secret(self.home / "secret", lambda: secrets.token_hex(32)).encode()


    @property
    def webhook_key_file(self) -> Path:
        """Where the key that encrypts webhook secrets is kept (mode 0600) when AFORO_WEBHOOK_KEY
        does not give it (api/webhooks/secrets.py)."""
        return self.home / "webhook.key"


def kept_secret(path: Path, generate: Callable[[], str]) -> str:
    """The secret kept in `path`, generated there first if missing: created with mode 0600 from the
    start (never readable by others, even for a moment) and exclusively (two processes never
    write two different secrets)."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(generate())
    return path.read_text().strip()


def redacted_url(url: str) -> str:
    """A service URL fit to print: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:***@{host}").geturl()


def load() -> Settings:
    return Settings.from_env()
