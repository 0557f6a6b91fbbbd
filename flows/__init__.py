"""Bytewax dataflows."""
