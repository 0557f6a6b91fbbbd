"""Thin adapters to Kafka and Postgres: sources, sinks, migrations."""
