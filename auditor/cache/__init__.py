"""A result cache, as ruff has: a run whose targets and the files they read are unchanged answers from
`.audit_cache/` without starting a process or importing torch, with the same output and exit code.

`store.ResultCache` looks results up and stores them around the runner (`auditor.runner`); `key` says what a
result depends on; `reads` records in each child which files its target's audit read; `codec` turns results
into entries and back. Nothing here imports torch.
"""

from auditor.cache.store import ResultCache, folder_chooser

__all__ = ["ResultCache", "folder_chooser"]
