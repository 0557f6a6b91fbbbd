"""Thin HTTP routes: authenticate, bound, parse, call the plain functions, produce, answer."""
