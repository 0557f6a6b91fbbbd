"""The local service stack behind `aforo up` / `aforo down`."""
