"""Aforo's HTTP front doors: REST events, uploads, webhooks and API-gateway log adapters.

Every door turns what it receives into CloudEvents and produces them, stamped with the time of
receipt, to the raw topic with the `aforo-tier` header naming the door. Semantic validation stays
in the pipeline; the doors only refuse input that is structurally broken.
"""
