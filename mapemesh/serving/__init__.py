"""Embedded serving: Knative Services run as scale-to-zero functions on one machine."""
