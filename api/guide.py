"""The integration guide's ready-to-paste snippets (api/console/guide.yaml), one set per ingestion
tier, filled in with the tenant's endpoint (the URL the console was opened at), the tenant and a
customer; `$AFORO_KEY` and other shell variables are left for the reader."""

from __future__ import annotations

from functools import cache
from importlib import resources
from string import Template

import yaml


@cache
def _tiers() -> list[dict]:
    return yaml.safe_load(resources.files("api").joinpath("console/guide.yaml").read_text())


def snippets(endpoint: str, tenant: str, customer: str) -> list[dict]:
    values = {"endpoint": endpoint.rstrip("/"), "tenant": tenant, "customer": customer}
    return [{**t, "snippets": [{**s, "code": Template(s["code"]).safe_substitute(values).rstrip("\n")}
                               for s in t["snippets"]]} for t in _tiers()]
