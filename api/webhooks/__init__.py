"""Webhook receivers: each provider's real signature scheme, then a JSONPath mapping to CloudEvents."""
