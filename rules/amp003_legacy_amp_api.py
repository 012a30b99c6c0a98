from __future__ import annotations

import ast
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._training_code import dotted, file_nodes

LEGACY = ("torch.cuda.amp", "torch.cpu.amp")
REPLACEMENT = {
    "autocast": "torch.amp.autocast({device!r}, ...)",
    "GradScaler": "torch.amp.GradScaler({device!r})",
    "custom_fwd": "torch.amp.custom_fwd(device_type={device!r})",
    "custom_bwd": "torch.amp.custom_bwd(device_type={device!r})",
}


def _advice(module: str, names: list[str]) -> str:
    device = module.split(".")[1]
    uses = [REPLACEMENT.get(n, f"torch.amp.{n}").format(device=device) for n in names] or [f"torch.amp (device_type={device!r})"]
    return ", ".join(f"`{u}`" for u in uses)


@register
class LegacyAmpApi(Rule):
    """
    ## What it does
    Flags the legacy device-specific mixed-precision API, `torch.cuda.amp` and `torch.cpu.amp`
    (`torch.cuda.amp.autocast()`, `torch.cuda.amp.GradScaler()`, `from torch.cuda.amp import autocast`), where
    the device-generic `torch.amp` API replaces it.

    ## Why is this bad?
    Since PyTorch 2.4, `torch.cuda.amp.autocast(...)` and `torch.cuda.amp.GradScaler(...)` emit a
    `FutureWarning` on every use and are slated for removal; `torch.amp.autocast("cuda", ...)` and
    `torch.amp.GradScaler("cuda")` (2.3 and later) do the same thing, and the same code then runs on CPU or
    other devices by changing one string.

    ## Example
    ```python
    from torch.cuda.amp import GradScaler, autocast

    scaler = GradScaler()
    with autocast():
        loss = model(x)
    ```

    ## Use instead
    ```python
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        loss = model(x)
    ```

    ## Fix
    No automatic fix: replace the import and pass the device type as the first argument.

    ## References
    PyTorch documentation, "Automatic Mixed Precision package - torch.amp" (deprecation notes of torch.cuda.amp).
    """

    code = "AMP003"
    name = "legacy-amp-api"
    severity = Severity.INFO
    summary = "source: the legacy torch.cuda.amp / torch.cpu.amp API where torch.amp replaces it"
    scope = "source"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        seen: set[int] = set()
        for node in file_nodes(ctx):
            found = _legacy(node)
            if found is None or node.lineno in seen:  # type: ignore[attr-defined]
                continue
            seen.add(node.lineno)  # type: ignore[attr-defined]
            module, names, written = found
            yield self.finding(
                f"`{written}` is the legacy {module} API (deprecated since torch 2.4); use {_advice(module, names)}",
                file=ctx.path, line=node.lineno,  # type: ignore[attr-defined]
            )


def _legacy(node: ast.AST) -> tuple[str, list[str], str] | None:
    """(legacy module, names used from it, the code as written) for an import or a use of the legacy API."""
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        if node.module in LEGACY:
            return node.module, [a.name for a in node.names], f"from {node.module} import {', '.join(a.name for a in node.names)}"
        if node.module in ("torch.cuda", "torch.cpu") and any(a.name == "amp" for a in node.names):
            return f"{node.module}.amp", [], f"from {node.module} import amp"
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in LEGACY:
                return alias.name, [], f"import {alias.name}"
    if isinstance(node, ast.Attribute):
        text = dotted(node)
        for module in LEGACY:
            if text is not None and text.startswith(module + ".") and text.count(".") == module.count(".") + 1:
                return module, [node.attr], text
    return None
