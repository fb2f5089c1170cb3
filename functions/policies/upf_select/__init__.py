"""The upf-select policy as a function; its MLSysOps policy file is `policy.py`, next to this one."""

from pathlib import Path

from mapemesh.policy.function import policy_function

policy = policy_function(Path(__file__).with_name("policy.py"), "upf-select")
