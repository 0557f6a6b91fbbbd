"""The rules of the product, as plain functions and small classes the dataflow calls."""
