"""Checks that need real hardware; run by hand, never collected by pytest (see each module's docstring)."""
