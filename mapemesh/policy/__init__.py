"""The policy SDK: MLSysOps policy files (`initialize`, `analyze`, `plan`) loaded and run unmodified.

Both MLSysOps shapes work, sync or async, recognised by their parameter names:
- the shipped code: `initialize()`; `analyze(context, application_description, system_description,
  mechanisms, telemetry, ml_connector) -> (bool, context)`; `plan(...same...) -> (dict, context)`;
- the documented one: `initialize(context)`; `analyze(context, application_description,
  system_description, current_plan, telemetry, ml_connector)`; `plan(..., available_assets)`.

A policy that raises or answers in a malformed way yields a `PolicyFailure` with its traceback; it never
raises into the caller, so one policy cannot block the others.
"""

from mapemesh.policy.loader import (
    INPUTS,
    Declaration,
    Policy,
    PolicyError,
    PolicyFailure,
    load_policy,
)

__all__ = ["INPUTS", "Declaration", "Policy", "PolicyError", "PolicyFailure", "load_policy"]
