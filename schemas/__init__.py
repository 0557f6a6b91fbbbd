"""Data shapes of Aforo: the in-flight record, terminal statuses and reasons, the CloudEvent envelope."""
