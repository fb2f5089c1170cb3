"""The loop's model, shared by the stage functions (each stage is a thin handler over it):

| module                      | what                                                                         |
|-----------------------------|------------------------------------------------------------------------------|
| `mapemesh.loop.plans`       | the plan lifecycle and the scheduling cycle, pure                            |
| `mapemesh.loop.plan_store`  | plans and cycles in the state store: queue, decide, dispatch, results, sweep |
| `mapemesh.loop.contexts`    | policy contexts: claim and release of analyses, deferrals, mode, merge        |
| `mapemesh.loop.requests`    | the analyze and plan requests a policy gets, with their inputs               |
"""
