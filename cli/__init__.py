"""The `aforo` command line."""
