"""Execution modes (process, runc, kata, urunc) and their RuntimeClasses."""
