"""The one settings object. No other module reads the environment."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import orjson

from schemas.errors import Unavailable


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


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    home: Path
    kafka_bootstrap_env: str | None = None
    database_url_env: str | None = None
    redis_url_env: str | None = None
    topic_prefix: str = "aforo"
    raw_partitions: int = 8
    secret_env: str | None = None
    recovery_dir_env: str | None = None
    embedded_kafka_port: int = 19092
    embedded_postgres_port: int = 15432
    embedded_redis_port: int = 16379
    epoch_interval_s: float = 2.0
    dedup_buckets: int = 16
    batch_size: int = 2000
    actor: str = "unknown"  # who reconciliation decisions are recorded as

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
            recovery_dir_env=e.get("AFORO_RECOVERY_DIR") or None,
            embedded_kafka_port=_int(e, "AFORO_EMBEDDED_KAFKA_PORT", 19092),
            embedded_postgres_port=_int(e, "AFORO_EMBEDDED_POSTGRES_PORT", 15432),
            embedded_redis_port=_int(e, "AFORO_EMBEDDED_REDIS_PORT", 16379),
            epoch_interval_s=float(e.get("AFORO_EPOCH_INTERVAL") or 2.0),
            dedup_buckets=_int(e, "AFORO_DEDUP_BUCKETS", 16),
            batch_size=_int(e, "AFORO_BATCH_SIZE", 2000),
            actor=e.get("AFORO_ACTOR") or e.get("USER") or "unknown",
        )

    def to_env(self) -> dict[str, str]:
        """The environment variables that give a child process (a CLI run, a test or bench
        worker) this same installation: the inverse of from_env, with URLs resolved."""
        return {"AFORO_HOME": str(self.home), "AFORO_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
                "AFORO_DATABASE_URL": self.database_url, "AFORO_REDIS_URL": self.redis_url,
                "AFORO_TOPIC_PREFIX": self.topic_prefix, "AFORO_SECRET": self.secret_env or "",
                "AFORO_EPOCH_INTERVAL": str(self.epoch_interval_s),
                "AFORO_BATCH_SIZE": str(self.batch_size), "AFORO_RAW_PARTITIONS": str(self.raw_partitions)}

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
        path = self.home / "secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path.read_text().strip().encode()


def load() -> Settings:
    return Settings.from_env()
