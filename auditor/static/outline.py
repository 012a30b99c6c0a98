"""The models a file declares, read from its source: `nn.Module` classes and what they need to be built,
factories (functions that return a model, whatever their name), module-level instances, and building blocks
(classes used inside another model of the file, never audited on their own).

The loader uses it next to what the import yields (it cannot tell a factory or a building block from the
objects alone); a file that is not imported gets its skipped candidates from here only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field

from auditor.static.safety import dotted_name, import_aliases, module_statements

FACTORY_NAMES = ("build_model", "get_model", "create_model", "make_model", "model")
_MODEL_BASES = ("Module", "LightningModule", "PreTrainedModel", "ModelMixin")


@dataclass
class Definition:
    """A class or function defined at the top of the file."""

    name: str
    line: int
    required: list[str]  # parameters without defaults (for a class: of its own `__init__`, after self)
    references: set[str] = field(default_factory=set)  # names it reads in its body
    returns: list[str] = field(default_factory=list)  # functions: dotted callees of what it returns
    annotation: str | None = None  # functions: the dotted return annotation
    bases: list[str] = field(default_factory=list)  # classes: dotted base classes
    has_init: bool = False


@dataclass(frozen=True)
class StaticCandidate:
    name: str
    line: int
    required: tuple[str, ...]


class Outline:
    """What one file declares at its top level."""

    def __init__(self, tree: ast.Module) -> None:
        self.aliases = import_aliases(tree.body)
        self.classes: dict[str, Definition] = {}
        self.functions: dict[str, Definition] = {}
        self.instances: dict[str, tuple[int, str]] = {}  # name -> (line, dotted callee)
        for statement in module_statements(tree.body):
            if isinstance(statement, ast.ClassDef):
                self.classes[statement.name] = self._class(statement)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[statement.name] = self._function(statement)
            elif isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Call):
                callee = dotted_name(statement.value.func, self.aliases)
                for target in statement.targets:
                    if isinstance(target, ast.Name) and callee:
                        self.instances[target.id] = (statement.lineno, callee)
        self.model_classes = self._model_classes()

    # --- what a name is -------------------------------------------------------------------------------------
    def is_model_class(self, dotted: str) -> bool:
        """A local nn.Module subclass, or a class of torch.nn (`nn.Sequential`), or a known model base."""
        return dotted in self.model_classes or _is_model_base(dotted)

    def factories(self) -> list[Definition]:
        """Functions that return a model (a call of a model class, or annotated so), or named like a factory."""
        return [f for name, f in self.functions.items() if name in FACTORY_NAMES or self.returns_model(name)]

    def returns_model(self, name: str) -> bool:
        function = self.functions.get(name)
        if function is None:
            return False
        named = [*function.returns, *([function.annotation] if function.annotation else [])]
        return any(self.is_model_class(n) or (n in self.functions and n != name and self.returns_model(n)) for n in named)

    def building_blocks(self) -> set[str]:
        """Model classes and factories used inside another model class or factory of this file: they are
        audited as part of it (kuangliu's `BasicBlock`, minGPT's `NewGELU` inside `Block`, a `plain_twenty()`
        that `build_model()` returns)."""
        factories = self.factories()
        users = [d for n, d in self.classes.items() if n in self.model_classes] + factories
        parts = self.model_classes | {f.name for f in factories}
        return {name for name in parts if any(name in user.references and user.name != name for user in users)}

    def static_candidates(self) -> list[StaticCandidate]:
        """The models a file that is not imported would have yielded: instances of models, factories, and model
        classes that neither a factory nor an instance builds and that are no building block."""
        found: list[StaticCandidate] = []
        covered = self.building_blocks() | {callee for _, callee in self.instances.values()}
        for name, definition in self.classes.items():
            if name in self.model_classes and name not in covered and not name.startswith("_") and not name.endswith("Loss"):
                found.append(StaticCandidate(name, definition.line, tuple(self.init_required(name))))
        for definition in self.factories():
            if not definition.name.startswith("_") and (not definition.required or definition.name in FACTORY_NAMES):
                found.append(StaticCandidate(definition.name, definition.line, tuple(definition.required)))
        for name, (line, callee) in self.instances.items():
            if (self.is_model_class(callee) or self.returns_model(callee)) and not callee.endswith("Loss"):
                found.append(StaticCandidate(name, line, ()))
        return sorted(found, key=lambda c: c.line)

    def init_required(self, name: str) -> list[str]:
        """Required constructor parameters of a local class, following local base classes without an `__init__`."""
        definition = self.classes.get(name)
        seen = set()
        while definition is not None and not definition.has_init and definition.name not in seen:
            seen.add(definition.name)
            definition = next((self.classes[b] for b in definition.bases if b in self.classes), None)
        return list(definition.required) if definition is not None else []

    # --- reading definitions ----------------------------------------------------------------------------------
    def _class(self, node: ast.ClassDef) -> Definition:
        bases = [b for b in (dotted_name(base, self.aliases) for base in node.bases) if b]
        init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
        required = _required(init.args)[1:] if init is not None else []
        return Definition(node.name, node.lineno, required, _references(node), bases=bases, has_init=init is not None)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> Definition:
        assigned: dict[str, str] = {}  # `model = ResNet(...)` ... `return model`
        returns: list[str] = []
        for inner in ast.walk(node):
            if isinstance(inner, ast.Assign) and isinstance(inner.value, ast.Call):
                callee = dotted_name(inner.value.func, self.aliases)
                for target in inner.targets:
                    if isinstance(target, ast.Name) and callee:
                        assigned[target.id] = callee
            elif isinstance(inner, ast.Return) and inner.value is not None:
                value = inner.value
                if isinstance(value, ast.Call):
                    callee = dotted_name(value.func, self.aliases)
                    returns.extend([callee] if callee else [])
                elif isinstance(value, ast.Name) and value.id in assigned:
                    returns.append(assigned[value.id])
        annotation = node.returns
        if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):  # "ResNet" / `from __future__`
            try:
                annotation = ast.parse(annotation.value, mode="eval").body
            except SyntaxError:
                annotation = None
        dotted = dotted_name(annotation, self.aliases) if isinstance(annotation, (ast.Name, ast.Attribute)) else None
        return Definition(node.name, node.lineno, _required(node.args), _references(node), returns=returns, annotation=dotted)

    def _model_classes(self) -> set[str]:
        found: set[str] = set()
        changed = True
        while changed:  # a class deriving from a local model class is one too
            changed = False
            for name, definition in self.classes.items():
                if name not in found and any(b in found or _is_model_base(b) for b in definition.bases):
                    found.add(name)
                    changed = True
        return found


def not_imported(label: str, blocker: str, tree: ast.Module, classes: dict[str, int] | None = None,
                 prefix: str = "not imported") -> list[tuple[str, str, int | None]]:
    """(target, reason, class line or None) for each model of a file that is not imported (or, with another
    `prefix`, whose import was stopped): its candidates, and every model class it defines (`classes`, name ->
    line), with the command that audits it on purpose; the file itself when no model is declared in it (it may
    build one it imports)."""
    outline = Outline(tree)
    candidates = outline.static_candidates()
    known = {c.name for c in candidates}
    candidates += [StaticCandidate(name, line, tuple(outline.init_required(name))) for name, line in (classes or {}).items() if name not in known]
    if not candidates:
        return [(label, f"{prefix}: {blocker}; no model is defined in it (`audit {label}:NAME` imports it on purpose to audit one it builds)", None)]
    found = []
    for candidate in sorted(candidates, key=lambda c: c.line):
        arguments = " --kwargs '{" + ", ".join(f'"{n}": ...' for n in candidate.required) + "}'" if candidate.required else ""
        line = candidate.line if candidate.name in outline.classes else None
        found.append((f"{label}:{candidate.name}", f"{prefix}: {blocker}; `audit {label}:{candidate.name}{arguments}` imports it on purpose", line))
    return found


def _is_model_base(dotted: str) -> bool:
    last = dotted.rsplit(".", 1)[-1]
    from_torch_nn = dotted.startswith("torch.nn.") and last[:1].isupper() and ".functional." not in dotted and ".init." not in dotted
    return from_torch_nn or last in _MODEL_BASES or last.endswith("PreTrainedModel")


def _required(arguments: ast.arguments) -> list[str]:
    positional = [*arguments.posonlyargs, *arguments.args]
    required = [a.arg for a in positional[: len(positional) - len(arguments.defaults)]]
    required += [a.arg for a, default in zip(arguments.kwonlyargs, arguments.kw_defaults) if default is None]
    return required


def _references(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
