"""Running Aforo in production: metrics, health and readiness, structured logs."""
