"""Functions of the MAPE loop, one sub-package per function (ARCHITECTURE.md, "Layout")."""
