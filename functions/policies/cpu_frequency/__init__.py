"""The CPU frequency policy (see `policy.py`)."""
