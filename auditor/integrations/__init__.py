"""Audits where training already happens: callbacks for PyTorch Lightning (`auditor.integrations.lightning`) and
the Hugging Face Trainer (`auditor.integrations.transformers`). Each needs its own optional dependency
(`pip install auditor[lightning]`, `auditor[transformers]`); importing this package needs neither.

`batches.py` turns a training batch into the forward's inputs; `training.py` is what both callbacks do with
them: audit, print, log, and stop the run when a finding is at or above `fail_on`.
"""
