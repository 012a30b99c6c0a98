"""Reading a repository's code as a careful person would, never running it: which calls build each of its
classes and with which values, and which calls feed an instance of it (`model(x, t)`).

Every top-level statement, function and method body of every file is walked once, in order, with a table of
what each name holds (`values.py`): literals and the repository's constants, argparse defaults (`args.hidden`
after `parser.add_argument("--hidden", default=256)`), config files read by a literal path
(`yaml.safe_load(open("cfg.yaml"))`), dataclass configs, and calls of the repository's classes, kept as calls.
A call of a local function with known arguments is followed into its body (`args = get_args()`, a factory
called with literals), a few levels deep. Branches whose test is known follow it; otherwise both are read,
and a value only one of them knows is kept (`meta_vocab_size = None`, then set from a pickle under an `if`).

What is recorded: each call of a repository class or function (`Site`s: the arguments as values, where), and
each call of an instance of a repository class (`CallSite`s: the forward arguments, their text and values).
"""

from __future__ import annotations

import ast
import copy
import json
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from auditor.files import read_text
from auditor.specs import DTYPE_NAMES
from auditor.static.values import ALLOWED_LIBRARY_PREFIXES, Call, Namespace, Ref, Unknown, is_known

MAX_DEPTH = 3  # local functions followed into, with known arguments
MAX_STATEMENTS = 200_000  # per repository: reading stays a fraction of a second on ordinary repositories
MAX_CONFIG_BYTES = 1 << 20
MAX_UNROLLED = 64  # a `for` over a known table this long runs item by item
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
_SELF_RETURNING = frozenset({"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "eval", "train", "requires_grad_",
                             "share_memory", "apply", "type", "to_empty"})
_DICT_LIKE = frozenset({"EasyDict", "edict", "AttrDict", "DotMap", "Munch", "munchify", "Box", "ConfigDict", "DictConfig", "create"})
_PURE = {
    "len": len, "int": int, "float": float, "str": str, "bool": bool, "abs": abs, "round": round, "max": max, "min": min,
    "sum": sum, "tuple": tuple, "list": list, "sorted": sorted, "range": lambda *a: list(range(*a)),
    "enumerate": lambda *a: list(enumerate(*a)), "zip": lambda *a: list(zip(*a)), "reversed": lambda a: list(reversed(a)),
}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
            ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b}


@dataclass(frozen=True)
class Argument:
    """One argument of a call as the source writes it, what it evaluates to (may be `Unknown`), and, for a
    plain name, the statement that bound it (`for images, labels in train_loader:`)."""

    text: str
    value: Any
    bound: str | None = None


@dataclass(frozen=True)
class CallSite:
    """A call in the repository: `model(x, t)` for a forward call, `Net(num_classes=10)` for a build."""

    file: str  # absolute path of the file (a notebook's .ipynb)
    line: int  # in the file's code (a notebook's joined code cells: `where` maps it to its cell)
    args: tuple[Argument, ...]
    kwargs: tuple[tuple[str, Argument], ...]
    depth: int = 0  # 0: read directly; more: inside a local function followed with known arguments

    def keywords(self) -> dict[str, Argument]:
        return dict(self.kwargs)

    @property
    def resolved(self) -> bool:
        return all(is_known(a.value) for a in self.args) and all(is_known(a.value) for _, a in self.kwargs)


@dataclass
class _Parser:
    """An argparse parser being read: its options' defaults by dest."""

    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Module:
    """A local module as a value (`import models`, `from . import layers`)."""

    path: Path


@dataclass(frozen=True)
class External:
    """A library module as a value (`torch`, `nn`, `yaml`)."""

    dotted: str


@dataclass(frozen=True)
class _File:
    """An opened file, by its resolved path (None: not found)."""

    path: Path | None
    text: str


@dataclass
class _Frame:
    module: ModuleReading
    names: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    self_attrs: dict[str, Any] | None = None  # in methods: what `self.x` holds
    depth: int = 0
    returns: list[Any] = field(default_factory=list)
    recording: bool = True

    def copy(self) -> _Frame:
        return _Frame(self.module, dict(self.names), dict(self.origins), dict(self.self_attrs) if self.self_attrs is not None else None,
                      self.depth, self.returns, self.recording)


class ModuleReading:
    """One file's definitions and import table; its top level is read on first need."""

    def __init__(self, reader: RepositoryReader, path: Path, tree: ast.Module) -> None:
        self.reader = reader
        self.path = path
        self.tree = tree
        self.classes: dict[str, ast.ClassDef] = {}
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.imports: dict[str, tuple[str, int, str | None]] = {}  # local name -> (module, level, member or None)
        self.stars: list[tuple[str, int]] = []  # `from module import *`: (module, level)
        for statement in _top_level(tree.body):
            if isinstance(statement, ast.ClassDef):
                self.classes.setdefault(statement.name, statement)
            elif isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions.setdefault(statement.name, statement)
            elif isinstance(statement, ast.Import):
                for alias in statement.names:
                    if alias.asname:
                        self.imports[alias.asname] = (alias.name, 0, None)
                    else:
                        root = alias.name.split(".")[0]
                        self.imports[root] = (root, 0, None)
            elif isinstance(statement, ast.ImportFrom):
                for alias in statement.names:
                    if alias.name == "*":
                        self.stars.append((statement.module or "", statement.level))
                    else:
                        self.imports[alias.asname or alias.name] = (statement.module or "", statement.level, alias.name)
        self.returns: dict[str, list[Any]] = {}  # top-level function -> what its returns evaluate to (parameters unknown)
        self.globals: dict[str, Any] | None = None  # the top level's names once read
        self.reading = False

    def ref(self, name: str) -> Ref:
        return Ref(name, path=str(self.path))


class RepositoryReader:
    """Reads every given file once; `sites` and `forward_calls` are keyed by (absolute path, name)."""

    def __init__(self, root: Path, load: Callable[[Path], ast.Module | None], *, locate: Callable[[Path, list[str], int], Path | None]) -> None:
        self.root = root
        self.load = load  # a repository file -> its syntax tree (None: not one of its readable files)
        self.locate = locate  # (importing file, dotted parts, level) -> the local file, or None when not the user's
        self.loaded: dict[Path, ModuleReading | None] = {}
        self.sites: dict[tuple[str, str], list[CallSite]] = {}
        self.forward_calls: dict[tuple[str, str], list[CallSite]] = {}
        self.budget = MAX_STATEMENTS
        self._resolving: set[tuple[Path, str]] = set()
        self.scopes_read: set[int] = set()  # scopes (functions, classes) already read
        self.namespaces: list[dict[str, Any]] = []  # the defaults of every parser whose arguments are parsed
        self.configs: dict[Path, tuple[int, int] | None] = {}  # config files looked for: (size, mtime), None if absent

    @property
    def modules(self) -> dict[Path, ModuleReading]:
        """The files read so far."""
        return {path: module for path, module in self.loaded.items() if module is not None}

    def module(self, path: Path) -> ModuleReading | None:
        if path not in self.loaded:
            tree = self.load(path)
            self.loaded[path] = ModuleReading(self, path, tree) if tree is not None else None
        return self.loaded[path]

    # --- the walk -------------------------------------------------------------------------------------------
    def read(self, path: Path, names: frozenset[str] | None = None) -> None:
        """Read a file's top level, and those of its functions and classes that mention one of `names` (the
        classes and factories being planned; None: all of them): each scope once, whatever is asked later."""
        module = self.module(path)
        if module is None:
            return
        self.module_globals(module)
        for function in module.functions.values():
            if id(function) not in self.scopes_read and (names is None or _mentions(function, names)):
                self.scopes_read.add(id(function))
                self._read_function(module, function)
        for cls in module.classes.values():
            if id(cls) not in self.scopes_read and (names is None or _mentions(cls, names)):
                self.scopes_read.add(id(cls))
                self._read_class(module, cls)

    def module_globals(self, module: ModuleReading) -> dict[str, Any]:
        if module.globals is not None:
            return module.globals
        if module.reading:  # an import cycle: what is known so far
            return {}
        module.reading = True
        frame = _Frame(module)
        self._execute(module.tree.body, frame)
        module.globals = frame.names
        module.reading = False
        return module.globals

    def _read_function(self, module: ModuleReading, function: ast.FunctionDef | ast.AsyncFunctionDef, self_attrs: dict[str, Any] | None = None) -> None:
        frame = _Frame(module, self_attrs=self_attrs)
        self._bind_parameters(function, frame, [], {})
        self._execute(function.body, frame)
        if self_attrs is None:
            module.returns[function.name] = [plan_value(r) for r in frame.returns]

    def _read_class(self, module: ModuleReading, cls: ast.ClassDef) -> None:
        """`__init__` first, so that the other methods know what `self.net` holds."""
        methods = [m for m in cls.body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        attrs: dict[str, Any] = {}
        for method in sorted(methods, key=lambda m: m.name != "__init__"):
            self._read_function(module, method, attrs)

    # --- statements -----------------------------------------------------------------------------------------
    def _execute(self, body: Iterable[ast.stmt], frame: _Frame) -> None:
        for statement in body:
            if self.budget <= 0:
                return
            self.budget -= 1
            self._statement(statement, frame)

    def _statement(self, node: ast.stmt, frame: _Frame) -> None:
        if isinstance(node, ast.Assign):
            value = self.evaluate(node.value, frame)
            for target in node.targets:
                self._assign(target, value, frame, node)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            self._assign(node.target, self.evaluate(node.value, frame), frame, node)
        elif isinstance(node, ast.AugAssign):
            current = self.evaluate(_load(node.target), frame)
            self._assign(node.target, _binary(node.op, current, self.evaluate(node.value, frame), node.value), frame, node)
        elif isinstance(node, ast.Expr):
            self.evaluate(node.value, frame)
        elif isinstance(node, ast.If):
            self._branches(self.evaluate(node.test, frame), node.body, node.orelse, frame)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            iterable = self.evaluate(node.iter, frame)
            first = iterable[0] if isinstance(iterable, (list, tuple)) and iterable else Unknown(_text(node.iter))
            if isinstance(iterable, (list, tuple)) and 0 < len(iterable) <= MAX_UNROLLED:  # a table walked item by item
                for item in iterable:
                    self._assign(node.target, item, frame, node, header=True)
                    self._execute(node.body, frame)
            else:  # a loop runs its body more than once, or not at all: what it computes is not known after it
                self._maybe(lambda inner: (self._assign(node.target, first, inner, node, header=True), self._execute(node.body, inner)),
                            frame, keep_known=False)
            self._execute(node.orelse, frame)
        elif isinstance(node, ast.While):
            self._maybe(lambda inner: self._execute(node.body, inner), frame, keep_known=False)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                value = self.evaluate(item.context_expr, frame)
                if item.optional_vars is not None:
                    self._assign(item.optional_vars, value, frame, node, header=True)
            self._execute(node.body, frame)
        elif isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            self._execute(node.body, frame)
            for handler in node.handlers:
                self._maybe(lambda inner, h=handler: self._execute(h.body, inner), frame)
            self._execute(node.orelse, frame)
            self._execute(node.finalbody, frame)
        elif isinstance(node, ast.Return):
            frame.returns.append(self.evaluate(node.value, frame) if node.value is not None else None)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            self._local_import(node, frame)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name in frame.module.classes or node.name in frame.module.functions:
                frame.names[node.name] = frame.module.ref(node.name)

    def _branches(self, test: Any, body: list[ast.stmt], orelse: list[ast.stmt], frame: _Frame) -> None:
        """A known test follows its branch (the other is still read, for its call sites); an unknown one reads
        both and keeps what either knows."""
        if is_known(test) and not isinstance(test, (Call, Ref, Namespace, _Parser, _Module, External, _File)):
            taken, other = (body, orelse) if test else (orelse, body)
            self._execute(taken, frame)
            shadow = frame.copy()
            shadow.returns = []
            self._execute(other, shadow)
            return
        self._maybe(lambda inner: self._execute(body, inner), frame)
        self._maybe(lambda inner: self._execute(orelse, inner), frame)

    def _maybe(self, run: Callable[[_Frame], Any], frame: _Frame, keep_known: bool = True) -> None:
        """Statements that may not run (a branch whose test is unknown): a name they set keeps its earlier
        value unless theirs is known. In a loop (`keep_known=False`), what they set is what the name holds."""
        inner = frame.copy()
        run(inner)
        for name, value in inner.names.items():
            if value is frame.names.get(name, _NOT_HANDLED):
                continue
            if name not in frame.names or is_known(value) or not is_known(frame.names[name]) or not keep_known:
                frame.names[name] = value
                if name in inner.origins:
                    frame.origins[name] = inner.origins[name]
        if frame.self_attrs is not None and inner.self_attrs is not None:
            for name, value in inner.self_attrs.items():
                if name not in frame.self_attrs or is_known(value):
                    frame.self_attrs[name] = value

    def _assign(self, target: ast.expr, value: Any, frame: _Frame, statement: ast.stmt, header: bool = False) -> None:
        if isinstance(target, ast.Name):
            frame.names[target.id] = value
            frame.origins[target.id] = _origin(statement, header)
        elif isinstance(target, (ast.Tuple, ast.List)):
            items = list(value) if isinstance(value, (tuple, list)) and len(value) == len(target.elts) else None
            for index, element in enumerate(target.elts):
                self._assign(element, items[index] if items is not None else Unknown(_text(element)), frame, statement, header)
        elif isinstance(target, ast.Attribute):
            if isinstance(target.value, ast.Name) and target.value.id == "self" and frame.self_attrs is not None:
                frame.self_attrs[target.attr] = value
                return
            owner = self.evaluate(target.value, frame)
            if isinstance(owner, Namespace):
                owner.values[target.attr] = value
            elif isinstance(owner, dict):
                owner[target.attr] = value
        elif isinstance(target, ast.Subscript):
            owner = self.evaluate(target.value, frame)
            key = self.evaluate(target.slice, frame)
            if isinstance(owner, dict) and is_known(key) and _hashable(key):
                owner[key] = value

    def _local_import(self, node: ast.Import | ast.ImportFrom, frame: _Frame) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.asname or alias.name.split(".")[0]
                frame.names[name] = self._import_value(frame.module, alias.name if alias.asname else name, 0, None)
        else:
            for alias in node.names:
                if alias.name != "*":
                    frame.names[alias.asname or alias.name] = self._import_value(frame.module, node.module or "", node.level, alias.name)

    # --- expressions ----------------------------------------------------------------------------------------
    def evaluate(self, node: ast.expr | None, frame: _Frame) -> Any:
        if node is None:
            return None
        try:
            return self._evaluate(node, frame)
        except (ArithmeticError, TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError):
            return Unknown(_text(node))

    def _evaluate(self, node: ast.expr, frame: _Frame) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return self._name(node.id, frame)
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items: list[Any] = []
            for element in node.elts:
                if isinstance(element, ast.Starred):
                    spread = self.evaluate(element.value, frame)
                    if not isinstance(spread, (list, tuple)):
                        return Unknown(_text(node))
                    items.extend(spread)
                else:
                    items.append(self.evaluate(element, frame))
            return tuple(items) if isinstance(node, ast.Tuple) else items if isinstance(node, ast.List) else Unknown(_text(node))
        if isinstance(node, ast.Dict):
            result: dict[Any, Any] = {}
            for key, value in zip(node.keys, node.values):
                if key is None:
                    spread = self.evaluate(value, frame)
                    if not isinstance(spread, dict):
                        return Unknown(_text(node))
                    result.update(spread)
                    continue
                evaluated = self.evaluate(key, frame)
                if not is_known(evaluated) or not _hashable(evaluated):
                    return Unknown(_text(node))
                result[evaluated] = self.evaluate(value, frame)
            return result
        if isinstance(node, ast.Attribute):
            return self._attribute(self.evaluate(node.value, frame), node.attr, node, frame)
        if isinstance(node, ast.Subscript):
            owner, key = self.evaluate(node.value, frame), self.evaluate(node.slice, frame)
            if isinstance(owner, (dict, list, tuple, str)) and is_known(key) and not isinstance(key, (Call, Ref)):
                return owner[key]
            return Unknown(_text(node))
        if isinstance(node, ast.Slice):
            parts = [self.evaluate(p, frame) if p is not None else None for p in (node.lower, node.upper, node.step)]
            return slice(*parts) if all(p is None or isinstance(p, int) for p in parts) else Unknown(_text(node))
        if isinstance(node, ast.BinOp):
            return _binary(node.op, self.evaluate(node.left, frame), self.evaluate(node.right, frame), node)
        if isinstance(node, ast.UnaryOp):
            operand = self.evaluate(node.operand, frame)
            if not _plain(operand):
                return Unknown(_text(node))
            return {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}[type(node.op)](operand)
        if isinstance(node, ast.BoolOp):
            values = [self.evaluate(v, frame) for v in node.values]
            if not all(_plain(v) for v in values):
                return Unknown(_text(node))
            result = values[0]
            for value in values[1:]:
                result = (result and value) if isinstance(node.op, ast.And) else (result or value)
            return result
        if isinstance(node, ast.Compare):
            left = self.evaluate(node.left, frame)
            for op, right_node in zip(node.ops, node.comparators):
                right = self.evaluate(right_node, frame)
                if not (_plain(left) and _plain(right)):
                    return Unknown(_text(node))
                if not _COMPARE[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            test = self.evaluate(node.test, frame)
            if _plain(test):
                return self.evaluate(node.body if test else node.orelse, frame)
            return Unknown(_text(node))
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                part = self.evaluate(value.value, frame) if isinstance(value, ast.FormattedValue) else value.value
                if not _plain(part):
                    return Unknown(_text(node))
                parts.append(str(part))
            return "".join(parts)
        if isinstance(node, ast.Call):
            return self._call(node, frame)
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp, ast.DictComp)):
            items: list[Any] = []
            if self._comprehension(node, 0, frame, items):
                return dict(items) if isinstance(node, ast.DictComp) else items
            self._comprehension_calls(node, frame)
            return Unknown(_text(node))
        if isinstance(node, ast.Lambda):
            return Unknown(_text(node))
        return Unknown(_text(node))

    def _comprehension(self, node: Any, index: int, frame: _Frame, items: list[Any]) -> bool:
        """A comprehension over known, small iterables, computed (`{k: getattr(args, k) for k in keys}`);
        False when some iterable or condition is not known."""
        if index == len(node.generators):
            if isinstance(node, ast.DictComp):
                key = self.evaluate(node.key, frame)
                if not (is_known(key) and _hashable(key)):
                    return False
                items.append((key, self.evaluate(node.value, frame)))
            else:
                items.append(self.evaluate(node.elt, frame))
            return len(items) <= MAX_UNROLLED * 4
        generator = node.generators[index]
        iterable = self.evaluate(generator.iter, frame)
        if not isinstance(iterable, (list, tuple)) or len(iterable) > MAX_UNROLLED * 4:
            return False
        for item in iterable:
            inner = frame.copy()
            self._assign(generator.target, item, inner, ast.Pass(), header=True)
            conditions = [self.evaluate(c, inner) for c in generator.ifs]
            if not all(_plain(c) for c in conditions):
                return False
            if all(conditions) and not self._comprehension(node, index + 1, inner, items):
                return False
        return True

    def _comprehension_calls(self, node: ast.expr, frame: _Frame) -> None:
        """Calls inside a comprehension still build things (`[Block(dim) for _ in range(depth)]`): read them
        with the loop variables unknown."""
        if isinstance(node, ast.Lambda):
            return
        inner = frame.copy()
        inner.returns = []
        for generator in getattr(node, "generators", []):
            self._assign(generator.target, Unknown(_text(generator.target)), inner, ast.Pass(), header=True)
        for part in (getattr(node, "elt", None), getattr(node, "key", None), getattr(node, "value", None)):
            if part is not None:
                self.evaluate(part, inner)

    def _name(self, name: str, frame: _Frame) -> Any:
        if name in frame.names:
            return frame.names[name]
        value = self.symbol(frame.module.path, name)
        if isinstance(value, Unknown) and (name in _PURE or name in _BUILTINS):
            return External(f"builtins.{name}")
        return value

    def _import_value(self, module: ModuleReading, dotted: str, level: int, member: str | None) -> Any:
        """What an imported name holds: a local module, a local definition or constant, or a library name."""
        parts = [p for p in dotted.split(".") if p]
        if member is not None:
            submodule = self.locate(module.path, [*parts, member], level)
            if submodule is not None and self.module(submodule) is not None:
                return _Module(submodule)
            source = self.locate(module.path, parts, level) if (parts or level) else None
            if source is not None:
                return self.symbol(source, member)
            if level:
                return Unknown(member)
            return External(f"{dotted}.{member}")
        found = self.locate(module.path, parts, level)
        if found is not None:
            return _Module(found)
        return External(dotted)

    def symbol(self, path: Path, name: str) -> Any:
        """A name as a local file's top level holds it: its class or function, an import, a constant, or what
        a `from x import *` brings."""
        reading = self.module(path)
        if reading is None or (path, name) in self._resolving:
            return Unknown(name)
        if name in reading.classes or name in reading.functions:
            return reading.ref(name)
        self._resolving.add((path, name))
        try:
            if name in reading.imports:
                return self._import_value(reading, *reading.imports[name])
            value = self.module_globals(reading).get(name, _NOT_HANDLED)
            if value is not _NOT_HANDLED:
                return value
            for dotted, level in reading.stars:
                source = self.locate(path, [p for p in dotted.split(".") if p], level)
                if source is not None:
                    value = self.symbol(source, name)
                    if not isinstance(value, Unknown):
                        return value
            return Unknown(name)
        finally:
            self._resolving.discard((path, name))

    def _attribute(self, owner: Any, attr: str, node: ast.Attribute, frame: _Frame) -> Any:
        if isinstance(node.value, ast.Name) and node.value.id == "self" and frame.self_attrs is not None:
            return frame.self_attrs.get(attr, Unknown(_text(node)))
        if isinstance(owner, Namespace):
            return owner.values.get(attr, Unknown(_text(node)))
        if isinstance(owner, dict) and attr in owner:
            return owner[attr]
        if isinstance(owner, _Module):
            return self.symbol(owner.path, attr)
        if isinstance(owner, External):
            return External(f"{owner.dotted}.{attr}")
        if isinstance(owner, Call) and owner.func.path is not None:
            return self._field(owner, attr, node)
        return Unknown(_text(node))

    def _field(self, instance: Call, attr: str, node: ast.Attribute) -> Any:
        """`config.n_layer` of a config object the code built (`GPTConfig(n_layer=2)`): the keyword it was given,
        else the class's default for that field."""
        given = instance.keywords()
        if attr in given:
            return given[attr]
        reading = self.module(Path(instance.func.path or ""))
        cls = reading.classes.get(instance.func.name) if reading is not None else None
        if cls is None:
            return Unknown(_text(node))
        fields = [s for s in cls.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
        for index, statement in enumerate(fields):
            if statement.target.id == attr:  # type: ignore[union-attr]
                if index < len(instance.args):
                    return instance.args[index]
                if statement.value is not None:
                    return self.evaluate(statement.value, _Frame(reading, recording=False))
        for statement in cls.body:  # a plain class attribute
            if isinstance(statement, ast.Assign) and any(isinstance(t, ast.Name) and t.id == attr for t in statement.targets):
                return self.evaluate(statement.value, _Frame(reading, recording=False))
        return Unknown(_text(node))

    # --- calls ----------------------------------------------------------------------------------------------
    def _call(self, node: ast.Call, frame: _Frame) -> Any:
        if isinstance(node.func, ast.Attribute):
            owner = self.evaluate(node.func.value, frame)
            method = node.func.attr
            handled = self._method(owner, method, node, frame)
            if handled is not _NOT_HANDLED:
                return handled
            func = self._attribute(owner, method, node.func, frame)
        else:
            func = self.evaluate(node.func, frame)
        args, kwargs, complete = self._arguments(node, frame)
        if isinstance(func, Ref) and func.path is not None:
            return self._call_local(func, node, [plan_value(a) for a in args], {k: plan_value(v) for k, v in kwargs.items()}, complete, frame)
        if isinstance(func, Call) and func.func.path is not None:  # an instance called: its forward
            self._record(self.forward_calls, func.func, node, frame, args, kwargs, complete)
            return Unknown(_text(node))
        if isinstance(func, External):
            return self._call_external(func.dotted, node, args, kwargs, complete, frame)
        return Unknown(_text(node))

    def _arguments(self, node: ast.Call, frame: _Frame) -> tuple[list[Any], dict[str, Any], bool]:
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        complete = True  # False: a `*x` or `**x` that is not known
        for argument in node.args:
            if isinstance(argument, ast.Starred):
                spread = self.evaluate(argument.value, frame)
                if isinstance(spread, (list, tuple)):
                    args.extend(spread)
                else:
                    complete = False
            else:
                args.append(self.evaluate(argument, frame))
        for keyword in node.keywords:
            value = self.evaluate(keyword.value, frame)
            if keyword.arg is not None:
                kwargs[keyword.arg] = value
            elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
                kwargs.update(value)
            elif isinstance(value, Namespace):
                kwargs.update(value.values)
            else:
                complete = False
        return args, kwargs, complete

    def _call_local(self, func: Ref, node: ast.Call, args: list[Any], kwargs: dict[str, Any], complete: bool, frame: _Frame) -> Any:
        reading = self.module(Path(func.path or ""))
        if reading is None:
            return Unknown(_text(node))
        site = self._record(self.sites, func, node, frame, args, kwargs, complete)
        if func.name in reading.classes:
            if not complete:
                return Unknown(_text(node))
            return Call(func, tuple(args), tuple(kwargs.items()), site)
        function = reading.functions[func.name]
        if frame.depth >= MAX_DEPTH or not complete:
            return Unknown(_text(node))
        inner = _Frame(reading, depth=frame.depth + 1, recording=frame.recording)
        self._bind_parameters(function, inner, args, kwargs)
        self._execute(function.body, inner)
        known = [r for r in inner.returns if is_known(r)]
        return known[0] if known else (inner.returns[0] if inner.returns else Unknown(_text(node)))

    def _bind_parameters(self, function: ast.FunctionDef | ast.AsyncFunctionDef, frame: _Frame, args: list[Any], kwargs: dict[str, Any]) -> None:
        arguments = function.args
        positional = [*arguments.posonlyargs, *arguments.args]
        defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
        outer = _Frame(frame.module, recording=False)
        bound = list(args)
        if positional and positional[0].arg in ("self", "cls") and frame.self_attrs is not None:
            positional, defaults = positional[1:], defaults[1:]
        for index, (parameter, default) in enumerate(zip(positional, defaults)):
            if index < len(bound):
                value = bound[index]
            elif parameter.arg in kwargs:
                value = kwargs[parameter.arg]
            elif default is not None:
                value = self.evaluate(default, outer)
            else:
                value = Unknown(parameter.arg)
            frame.names[parameter.arg] = value
        for parameter, default in zip(arguments.kwonlyargs, arguments.kw_defaults):
            frame.names[parameter.arg] = kwargs.get(parameter.arg, self.evaluate(default, outer) if default is not None else Unknown(parameter.arg))
        if arguments.vararg is not None:
            frame.names[arguments.vararg.arg] = tuple(bound[len(positional):])
        if arguments.kwarg is not None:
            names = {p.arg for p in [*positional, *arguments.kwonlyargs]}
            frame.names[arguments.kwarg.arg] = {k: v for k, v in kwargs.items() if k not in names}

    def _call_external(self, dotted: str, node: ast.Call, args: list[Any], kwargs: dict[str, Any], complete: bool, frame: _Frame) -> Any:
        last = dotted.rsplit(".", 1)[-1]
        known = complete and all(is_known(a) for a in args) and all(is_known(v) for v in kwargs.values())
        if dotted.startswith("builtins."):
            if last == "open":
                return self._open(args[0] if args else None, frame)
            if last == "dict" and known:
                base = dict(args[0]) if args and isinstance(args[0], dict) else {}
                base.update(kwargs)
                return base
            if last == "getattr" and len(args) >= 2 and isinstance(args[1], str):
                value = self._attribute(args[0], args[1], ast.Attribute(value=node.args[0], attr=args[1]), frame)
                return args[2] if isinstance(value, Unknown) and len(args) > 2 else value
            if last == "vars" and args and isinstance(args[0], Namespace):
                return args[0].values
            if last in _PURE and known and all(_plain(a) for a in args):
                return _PURE[last](*args, **kwargs)
            return Unknown(_text(node))
        if dotted in ("argparse.ArgumentParser",):
            return _Parser()
        if last in ("safe_load", "load", "full_load", "loads") and dotted.split(".")[0] in ("yaml", "json", "ruamel", "toml", "tomllib", "tomli"):
            return self._parse_config(args[0] if args else None, dotted.split(".")[0], node)
        if dotted in ("omegaconf.OmegaConf.load",) and args:
            return self._parse_config(self._open(args[0], frame), "yaml", node)
        if last in _DICT_LIKE and args and isinstance(args[0], dict):
            return args[0]
        if dotted in ("torch.device",):
            return "cpu"
        if dotted in ("os.path.join", "posixpath.join") and known and all(isinstance(a, str) for a in args):
            return str(Path(*args))
        if dotted in ("copy.deepcopy", "copy.copy") and args:
            return copy.deepcopy(args[0]) if isinstance(args[0], (dict, list)) else args[0]
        module, _, name = dotted.rpartition(".")
        if module and (dotted.startswith(ALLOWED_LIBRARY_PREFIXES) or module == "torch"):
            return Call(Ref(name, module=module), tuple(plan_value(a) for a in args), tuple((k, plan_value(v)) for k, v in kwargs.items()),
                        self._where(node, frame))
        return Unknown(_text(node))

    def _method(self, owner: Any, method: str, node: ast.Call, frame: _Frame) -> Any:
        """Methods whose effect reading follows: argparse, dict updates, `model.to(device)`, `model.forward(x)`."""
        if isinstance(owner, _Parser):
            args, kwargs, _ = self._arguments(node, frame)
            if method == "add_argument":
                _add_option(owner, args, kwargs)
                return None
            if method == "set_defaults":
                owner.defaults.update(kwargs)
                return None
            if method in ("add_argument_group", "add_mutually_exclusive_group"):
                return owner
            if method in ("parse_args", "parse_intermixed_args", "parse_known_args"):
                self.namespaces.append(owner.defaults)
                namespace = Namespace(dict(owner.defaults))
                return (namespace, []) if method == "parse_known_args" else namespace
            return Unknown(_text(node))
        if isinstance(owner, Call) and owner.func.path is not None:
            if method in _SELF_RETURNING:
                self._arguments(node, frame)
                return owner
            if method == "forward":
                self._record(self.forward_calls, owner.func, node, frame)
                return Unknown(_text(node))
        if isinstance(owner, dict):
            args, kwargs, _ = self._arguments(node, frame)
            if method == "update" and (args or kwargs):
                if args and isinstance(args[0], dict):
                    owner.update(args[0])
                owner.update(kwargs)
                return None
            if method in ("get", "pop") and args and _hashable(args[0]):
                value = owner.get(args[0], args[1] if len(args) > 1 else None)
                if method == "pop":
                    owner.pop(args[0], None)
                return value
            if method == "copy":
                return dict(owner)
            if method in ("keys", "values", "items"):
                return list(getattr(owner, method)())
        if isinstance(owner, str) and method in ("format", "lower", "upper", "strip", "replace", "split", "join"):
            args, kwargs, complete = self._arguments(node, frame)
            if complete and all(_plain(a) for a in args) and all(_plain(v) for v in kwargs.values()):
                return getattr(owner, method)(*args, **kwargs)
        if isinstance(owner, list) and method == "append":
            args, _, _ = self._arguments(node, frame)
            if args:
                owner.append(args[0])
            return None
        if isinstance(owner, _File) and method in ("read", "read_text"):
            return owner.text
        return _NOT_HANDLED

    def _open(self, path: Any, frame: _Frame) -> Any:
        """A config file the code opens by a known path: relative to the working directory a script is run
        from (the repository root), else to the script's own folder."""
        if not isinstance(path, str):
            return Unknown("open(...)")
        for base in (self.root, frame.module.path.parent):
            candidate = (base / path).resolve()
            if candidate.suffix.lower() not in CONFIG_SUFFIXES or not _inside(candidate, self.root):
                continue
            try:
                status = candidate.stat()
            except OSError:
                self.configs[candidate] = None  # created later, it changes what is read
                continue
            self.configs[candidate] = (status.st_size, status.st_mtime_ns)
            try:
                if candidate.is_file() and status.st_size <= MAX_CONFIG_BYTES:
                    return _File(candidate, read_text(candidate))
            except OSError:
                pass
        return Unknown(f"open({path!r})")

    def _parse_config(self, source: Any, kind: str, node: ast.Call) -> Any:
        text = source.text if isinstance(source, _File) else source if isinstance(source, str) else None
        if text is None:
            return Unknown(_text(node))
        try:
            if kind == "json" or (isinstance(source, _File) and source.path is not None and source.path.suffix == ".json"):
                return json.loads(text)
            import yaml

            return yaml.safe_load(text)
        except Exception:  # noqa: BLE001 - a config that does not parse is simply not known
            return Unknown(_text(node))

    # --- recording ------------------------------------------------------------------------------------------
    def _record(self, table: dict[tuple[str, str], list[CallSite]], func: Ref, node: ast.Call, frame: _Frame,
                args: list[Any] | None = None, kwargs: dict[str, Any] | None = None, complete: bool = True) -> str:
        where = self._where(node, frame)
        if not frame.recording:
            return where
        if args is None or kwargs is None:
            args, kwargs, complete = self._arguments(node, frame)
        args, kwargs = [plan_value(a) for a in args], {k: plan_value(v) for k, v in kwargs.items()}
        texts = [a for a in node.args if not isinstance(a, ast.Starred)]
        positional = tuple(Argument(_text(t), v, _bound(t, frame)) for t, v in zip(texts, args)) if len(texts) == len(args) \
            else tuple(Argument("*", v) for v in args)
        named = {k.arg: k.value for k in node.keywords if k.arg is not None}
        keywords = tuple((k, Argument(_text(named[k]) if k in named else f"**...[{k!r}]", v, _bound(named.get(k), frame))) for k, v in kwargs.items())
        if not complete:
            positional += (Argument("*...", Unknown("*...")),)
        site = CallSite(str(frame.module.path), node.lineno, positional, keywords, frame.depth)
        sites = table.setdefault((func.path or "", func.name), [])
        same = next((i for i, s in enumerate(sites) if (s.file, s.line) == (site.file, site.line)), None)
        if same is None:
            sites.append(site)
        elif site.resolved and not sites[same].resolved:  # read again with its function's arguments known
            sites[same] = site
        return where

    def _where(self, node: ast.AST, frame: _Frame) -> str:
        return f"{frame.module.path}:{getattr(node, 'lineno', 0)}"


_NOT_HANDLED = object()


def plan_value(value: Any, depth: int = 0) -> Any:
    """A value as a plan may carry it: library names become `Ref`s where a plan may use them (torch.nn's
    classes, dtypes, functools.partial), else `Unknown`; the reader's own helpers (parsers, files, modules)
    become `Unknown`."""
    if depth > 20:
        return Unknown("...")
    if isinstance(value, External):
        module, _, name = value.dotted.rpartition(".")
        allowed = value.dotted.startswith(ALLOWED_LIBRARY_PREFIXES) or (module == "torch" and name in DTYPE_NAMES)
        return Ref(name, module=module) if allowed and module else Unknown(value.dotted.removeprefix("builtins."))
    if isinstance(value, Namespace):
        return Namespace({k: plan_value(v, depth + 1) for k, v in value.values.items()})
    if isinstance(value, (_Parser, _Module, _File)):
        return Unknown(type(value).__name__.strip("_").lower())
    if isinstance(value, list):
        return [plan_value(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(plan_value(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: plan_value(v, depth + 1) for k, v in value.items()}
    return value
_BUILTINS = frozenset({"dict", "open", "getattr", "vars", "print"})


def _add_option(parser: _Parser, args: list[Any], kwargs: dict[str, Any]) -> None:
    flags = [a for a in args if isinstance(a, str)]
    if not flags:
        return
    long = next((f for f in flags if f.startswith("--")), None)
    dest = kwargs.get("dest") or (long or flags[0]).lstrip("-").replace("-", "_")
    if not isinstance(dest, str):
        return
    action = kwargs.get("action")
    if "default" in kwargs:
        default = kwargs["default"]
    elif action == "store_true":
        default = False
    elif action == "store_false":
        default = True
    else:
        default = None
    kind = kwargs.get("type")
    if isinstance(default, str) and isinstance(kind, External) and kind.dotted in ("builtins.int", "builtins.float"):
        try:
            default = int(default) if kind.dotted == "builtins.int" else float(default)
        except ValueError:
            pass
    parser.defaults[dest] = default


def _binary(op: ast.operator, left: Any, right: Any, node: ast.AST) -> Any:
    function = _BINARY.get(type(op))
    if function is None or not (_plain(left) and _plain(right)):
        return Unknown(_text(node))
    return function(left, right)


def _plain(value: Any) -> bool:
    """A literal value plain operators apply to."""
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    return value is None or isinstance(value, (int, float, str, bool, bytes))


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _load(target: ast.expr) -> ast.expr:
    copied = copy.copy(target)
    copied.ctx = ast.Load()  # type: ignore[attr-defined]
    return copied


def _text(node: ast.AST, limit: int = 60) -> str:
    """The source text of a node, shortened; kept on the node (the same nodes are read again and again)."""
    cached = getattr(node, "_auditor_text", None)
    if cached is None:
        try:
            cached = ast.unparse(node)
        except Exception:  # noqa: BLE001
            cached = "..."
        node._auditor_text = cached  # type: ignore[attr-defined]
    return cached if len(cached) <= limit else cached[: limit - 3] + "..."


def _origin(statement: ast.stmt, header: bool) -> str:
    if header and isinstance(statement, (ast.For, ast.AsyncFor)):
        return f"for {_text(statement.target)} in {_text(statement.iter)}:"
    if header and isinstance(statement, (ast.With, ast.AsyncWith)):
        return f"with {', '.join(_text(i.context_expr) for i in statement.items)}:"
    return _text(statement, 80)


def _bound(node: ast.expr | None, frame: _Frame) -> str | None:
    if isinstance(node, ast.Name):
        return frame.origins.get(node.id)
    return None


def _mentions(node: ast.AST, names: frozenset[str]) -> bool:
    return any((isinstance(n, ast.Name) and n.id in names) or (isinstance(n, ast.Attribute) and n.attr in names) for n in ast.walk(node))


def _top_level(body: Iterable[ast.stmt]) -> Iterable[ast.stmt]:
    """Top-level statements, with the blocks of `if`/`try` (import guards) but not the main guard's body."""
    from auditor.static.safety import module_statements

    return module_statements(body)
