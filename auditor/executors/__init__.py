"""Executors other than this machine's child processes: where the runner (`auditor.runner`) may send each
target's model half instead of `runner.Processes`. An executor gives the runner a `Child` per target that it
waits on like a local one; on the other side the target runs through `runner.audit_models_here`, in a child
process there, with the same guard, time limit and memory budget, so results do not depend on where they ran.

- `dask`: one task per target on a Dask distributed cluster (`audit --executor dask [--scheduler ADDRESS]`;
  the `auditor[dask]` extra).
"""
