"""The built-in rule catalog (installed as `auditor_rules`). One module per rule or small family.

Adding a rule = adding a module here with a `@register`ed `Rule` subclass (and its fixtures in tests/). Rules
import only the engine's public API (`auditor.rule`, `auditor.graph`, `auditor.findings`), never the reverse,
and import torch only inside `check` when they need tensor math, so `audit rules` stays instant.
"""
