from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Iterator

from auditor.findings import Finding, Severity
from auditor.rule import Rule, SourceContext, register
from auditor_rules._training_code import Call, Imports, calls_in, dotted, file_calls, file_imports, literal, scopes

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from auditor.sourcefix import ScriptContext, SourceEdit

CLIP_FUNCTIONS = ("clip_grad_norm_", "clip_grad_value_", "clip_grad_norm")


def is_clip(call: Call) -> bool:
    """torch's own clipping functions (`torch.nn.utils.clip_grad_norm_`, imported or through `nn`); a method of
    another object (Accelerate's `accelerator.clip_grad_norm_` unscales by itself) is not one."""
    if call.last not in CLIP_FUNCTIONS:
        return False
    resolved = call.resolved or ""
    return resolved.startswith("torch.") or (call.name or "").split(".")[0] in ("nn", "utils") or call.name in CLIP_FUNCTIONS


@dataclass
class Scalers:
    """Names bound to a GradScaler (`scaler = GradScaler()`, `self.scaler = torch.amp.GradScaler("cuda")`); a
    name built with `enabled=False` is not one. Other names count when they read like one (`scaler`, passed in)."""

    enabled: set[str] = field(default_factory=set)
    disabled: set[str] = field(default_factory=set)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str) or name in self.disabled:
            return False
        return name in self.enabled or "scaler" in name.rpartition(".")[2].lower()


def scaler_names(tree: ast.Module, imports: Imports) -> Scalers:
    scalers = Scalers()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            callee = imports.resolve(dotted(node.value.func)) or ""
            if not callee.endswith("GradScaler"):
                continue
            enabled = next((k for k in node.value.keywords if k.arg == "enabled"), None)
            bucket = scalers.disabled if enabled is not None and literal(enabled.value) is False else scalers.enabled
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bucket.update(name for name in (dotted(t) for t in targets) if name)
    return scalers


def _is_scaler(name: str | None, scalers: Scalers) -> bool:
    return name in scalers


def optimizers_by_params(tree: ast.Module) -> dict[str, str]:
    """`opt = AdamW(model.parameters(), ...)` gives {"model": "opt"}: which optimizer owns whose parameters."""
    owners: dict[str, str] = {}
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.value, ast.Call)):
            continue
        callee = (dotted(node.value.func) or "").rpartition(".")[2]
        target = dotted(node.targets[0])
        source = _parameters_of(node.value.args[0]) if node.value.args else None
        if target and source and callee[:1].isupper():
            owners[source] = target
    return owners


def _parameters_of(node: ast.AST) -> str | None:
    """`model` for `model.parameters()`."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "parameters":
        return dotted(node.func.value)
    return None


@dataclass
class _ScalerState:
    backward_line: int | None = None  # a scaled backward with no step since
    unscaled: set[str] = field(default_factory=set)  # optimizers unscale_d since that backward
    unscaled_any: bool = False


@register
class ClipBeforeUnscale(Rule):
    """
    ## What it does
    Flags `torch.nn.utils.clip_grad_norm_` / `clip_grad_value_` called while the gradients are still multiplied by
    a `GradScaler`'s loss scale: after `scaler.scale(loss).backward()` with no `scaler.unscale_(optimizer)` for
    the optimizer owning the clipped parameters in between, or before `scaler.step(optimizer)` in a step function
    that never unscales. Static: it reads the file, never imports or runs it.

    ## Why is this bad?
    `scaler.scale(loss)` multiplies the loss, and so every gradient, by the loss scale (65536 at the start). A
    clip threshold of 1.0 is then compared with norms 65536 times too large: it clips every step, by a huge
    factor, and `scaler.step` later divides the already-clipped gradients by the scale again. The update ends up
    tens of thousands of times too small, with no error and no warning.

    ## Example
    ```python
    scaler.scale(loss).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Use instead
    ```python
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    ```

    ## Fix
    `--fix` adds `scaler.unscale_(optimizer)` right before the clip (once per optimizer per step): the optimizer
    that owns the clipped parameters, else the one the scaler steps next. With several optimizers, unscale the one
    that owns the parameters you clip.

    ## Fix safety
    Unsafe: the clipping then applies to the true gradients, so training changes (as intended); applied with
    `--unsafe-fixes`.

    ## References
    PyTorch documentation, "Automatic Mixed Precision examples: Working with Unscaled Gradients".
    Pascanu, Mikolov, Bengio, "On the difficulty of training recurrent neural networks", ICML 2013.
    """

    code = "CLP001"
    name = "clip-before-unscale"
    severity = Severity.ERROR
    summary = "source: gradients clipped while still scaled by a GradScaler"
    scope = "source"
    fix_title = "Unscale the optimizer's gradients before clipping them"
    fix_safety = "unsafe"

    def check(self, ctx: SourceContext) -> Iterator[Finding]:
        imports = file_imports(ctx)
        everything = file_calls(ctx)
        if not any(is_clip(c) for c in everything):
            return
        scalers = scaler_names(ctx.tree, imports)
        owners = optimizers_by_params(ctx.tree)
        scaled_anywhere = any(_scaled_backward(c, {}, scalers) for c in everything)
        unscaled_anywhere = {c.receiver for c in everything if c.last == "unscale_" and _is_scaler(c.receiver, scalers)}
        for statements in scopes(ctx.tree):
            yield from self._scope(ctx, calls_in(statements, imports), scalers, owners, scaled_anywhere, unscaled_anywhere)

    def _scope(self, ctx: SourceContext, calls: list[Call], scalers: Scalers, owners: dict[str, str], scaled_anywhere: bool, unscaled_anywhere: set[str | None]) -> Iterator[Finding]:
        states: dict[str, _ScalerState] = {}
        scaled_vars: dict[str, str] = {}  # `scaled = scaler.scale(loss)` -> {"scaled": "scaler"}
        for index, call in enumerate(calls):
            scaler = _scaled_backward(call, scaled_vars, scalers)
            if scaler is not None:
                states[scaler] = _ScalerState(backward_line=call.node.lineno)
                continue
            receiver = call.receiver
            if _is_scaler(receiver, scalers) and call.last == "unscale_":
                state = states.setdefault(receiver, _ScalerState())  # type: ignore[arg-type]
                state.unscaled_any = True
                if call.node.args:
                    state.unscaled.add(dotted(call.node.args[0]) or "")
            elif _is_scaler(receiver, scalers) and call.last in ("step", "update"):
                states.pop(receiver, None)  # type: ignore[arg-type]
            elif _is_scaler(receiver, scalers) and call.last == "scale":
                parent = _assigned_name(ctx.tree, call.node)
                if parent:
                    scaled_vars[parent] = receiver  # type: ignore[assignment]
            elif is_clip(call):
                finding = self._at_clip(ctx, call, calls[index + 1:], states, scalers, owners, scaled_anywhere, unscaled_anywhere)
                if finding is not None:
                    yield finding

    def _at_clip(self, ctx: SourceContext, clip: Call, after: list[Call], states: dict[str, _ScalerState], scalers: Scalers, owners: dict[str, str], scaled_anywhere: bool, unscaled_anywhere: set[str | None]) -> Finding | None:
        what = f"`{clip.name}`"
        params = _parameters_of(clip.node.args[0]) if clip.node.args else None
        optimizer = owners.get(params or "")
        for scaler, state in states.items():
            if state.backward_line is None:
                continue
            if not state.unscaled_any:
                return self.finding(
                    f"{what} clips gradients still scaled by `{scaler}` (scaled backward on line {state.backward_line}, "
                    f"no `{scaler}.unscale_(optimizer)` before the clip): the threshold applies to gradients multiplied "
                    f"by the loss scale",
                    file=ctx.path, line=clip.node.lineno,
                )
            if optimizer is not None and optimizer not in state.unscaled:
                done = ", ".join(f"`{o}`" for o in sorted(state.unscaled) if o)
                return self.finding(
                    f"{what} clips the parameters of `{params}`, owned by `{optimizer}`, but `{scaler}.unscale_` was "
                    f"called only for {done}: `{optimizer}`'s gradients are still scaled",
                    file=ctx.path, line=clip.node.lineno,
                )
            return None
        # a step function that clips and then steps the scaler, with the backward elsewhere and no unscale_ at all
        stepping = next((c for c in after if _is_scaler(c.receiver, scalers) and c.last == "step"), None)
        if stepping is not None and scaled_anywhere and stepping.receiver not in unscaled_anywhere:
            return self.finding(
                f"{what} runs before `{stepping.receiver}.step(...)` (line {stepping.node.lineno}) and `{stepping.receiver}` "
                f"never unscales: the clipped gradients are still multiplied by the loss scale",
                file=ctx.path, line=clip.node.lineno,
            )
        return None

    def source_fix(self, ctx: ScriptContext, finding: Finding) -> SourceEdit:
        """`scaler.unscale_(optimizer)` before the clip: the scaler of the backward before it (or of the step
        after it), the optimizer owning the clipped parameters (or the one that scaler steps next)."""
        tree, imports = ctx.tree, file_imports(ctx)
        scalers = scaler_names(tree, imports)
        calls = next((calls_in(s, imports) for s in scopes(tree) if any(c.node.lineno == finding.line and is_clip(c) for c in calls_in(s, imports))), [])
        clip = next((c for c in calls if c.node.lineno == finding.line and is_clip(c)), None)
        if clip is None:
            ctx.cannot(f"no clip on line {finding.line}")
        index = calls.index(clip)
        before = [_scaled_backward(c, {}, scalers) for c in calls[:index]]
        steps = [c for c in calls[index + 1:] if _is_scaler(c.receiver, scalers) and c.last == "step" and c.node.args]
        scaler = next((s for s in reversed(before) if s), None) or (steps[0].receiver if steps else None)
        params = _parameters_of(clip.node.args[0]) if clip.node.args else None
        stepped = [dotted(c.node.args[0]) for c in steps if c.receiver == scaler]
        optimizer = optimizers_by_params(tree).get(params or "") or next((s for s in stepped if s), None)
        if scaler is None or optimizer is None:
            ctx.cannot("which scaler and optimizer the clipped gradients belong to is not written in this scope")
        call = ctx.call_at(finding.line, CLIP_FUNCTIONS)
        return ctx.edited(finding, ctx.insert_before(call, f"{scaler}.unscale_({optimizer})\n"), f"{scaler}.unscale_({optimizer}) before the clip", safe=False)


def _scaled_backward(call: Call, scaled_vars: dict[str, str], scalers: Scalers) -> str | None:
    """The scaler behind `scaler.scale(loss).backward()` or `scaled.backward()` (scaled = scaler.scale(...))."""
    func = call.node.func
    if not (isinstance(func, ast.Attribute) and func.attr == "backward"):
        return None
    inner = func.value
    if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "scale":
        receiver = dotted(inner.func.value)
        return receiver if _is_scaler(receiver, scalers) else None
    name = dotted(inner)
    return scaled_vars.get(name or "")


def _assigned_name(tree: ast.Module, call: ast.Call) -> str | None:
    """The name a call's result is assigned to (`scaled = scaler.scale(loss)`)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and node.value is call and len(node.targets) == 1:
            return dotted(node.targets[0])
    return None
