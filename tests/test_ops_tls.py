"""Postgres and Redis over TLS with certificate verification, as production URLs give them
(`sslmode=verify-full&sslrootcert=`, `rediss://...?ssl_ca_certs=`). The test stack's servers speak
plain TCP, so a TLS terminator (what stunnel or a sidecar proxy does in front of a server) sits in
front of each: Postgres's own SSLRequest negotiation, then TLS; Redis TLS from the first byte."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import ssl
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from config import Settings
from observe.health import check_postgres, check_redis
from sinks.entitlements import CatalogCache

pytestmark = pytest.mark.integration
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, server.pem, server.key)."""
    directory.mkdir(parents=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aforo test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM,
                                                  serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


class TlsTerminator:
    """Accepts TLS on a free port and relays the plaintext to `upstream` (host, port)."""

    def __init__(self, upstream: tuple[str, int], context: ssl.SSLContext, postgres: bool):
        self._upstream, self._context, self._postgres = upstream, context, postgres
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        threading.Thread(target=self._run, daemon=True).start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = server = self._loop.run_until_complete(asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=None if self._postgres else self._context))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self._postgres:  # Postgres asks for TLS in plaintext first, then upgrades
                if await reader.readexactly(8) != SSL_REQUEST:
                    writer.close()
                    return
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self._context)
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
            self._writers.add(up_writer)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
            writer.close()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _shutdown(self) -> None:
        self._server.close()
        for w in self._writers:
            w.close()
        relays = asyncio.all_tasks() - {asyncio.current_task()}
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@pytest.fixture
def tls(settings, tmp_path) -> Iterator[Settings]:
    ca, cert, key = _certificates(tmp_path / "pki")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    pg, rd = urlsplit(settings.database_url), urlsplit(settings.redis_url)
    pg_tls = TlsTerminator((pg.hostname, pg.port), context, postgres=True)
    redis_tls = TlsTerminator((rd.hostname, rd.port), context, postgres=False)
    def credentials(url) -> str:  # the embedded stack's services have passwords
        return url.netloc.rpartition("@")[0] + "@" if "@" in url.netloc else ""
    over_tls = dataclasses.replace(
        settings,
        database_url_env=f"postgresql://{credentials(pg)}127.0.0.1:{pg_tls.port}{pg.path}?sslmode=verify-full&sslrootcert={ca}",
        redis_url_env=f"rediss://{credentials(rd)}127.0.0.1:{redis_tls.port}{rd.path}?ssl_ca_certs={ca}&ssl_cert_reqs=required")
    try:
        yield over_tls
    finally:
        pg_tls.close()
        redis_tls.close()


def test_postgres_and_redis_over_verified_tls(tls, tmp_path):
    over_tls = tls
    postgres, migrations = check_postgres(over_tls)
    assert postgres.ok and postgres.detail.endswith(", TLS"), postgres.detail
    assert migrations.ok
    redis = check_redis(over_tls)
    assert redis.ok and redis.detail.endswith(", TLS"), redis.detail
    # the flow's catalog cache reads through both
    cache = CatalogCache(over_tls.database_url, over_tls.redis_url)
    assert "acme" in cache.tenants()
    assert cache.entitlements([("acme", "cust-1")])[("acme", "cust-1")] is not None

    # verification is real: a CA that did not sign the server's certificate is refused
    ca, (other_ca, _, _) = str(tmp_path / "pki" / "ca.pem"), _certificates(tmp_path / "other")
    wrong = dataclasses.replace(over_tls, database_url_env=over_tls.database_url.replace(ca, str(other_ca)),
                                redis_url_env=over_tls.redis_url.replace(ca, str(other_ca)))
    postgres, _ = check_postgres(wrong)
    redis = check_redis(wrong)
    assert not postgres.ok and "SSL error" in postgres.detail, postgres.detail
    assert not redis.ok and "certificate verify failed" in redis.detail.lower(), redis.detail
