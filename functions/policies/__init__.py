"""The policies shipped with mapemesh, one package per policy, each an MLSysOps policy file."""
