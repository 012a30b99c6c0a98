"""Whether importing a file is safe: its top level only declares things.

Importing runs a file's top level. A model file's top level declares: imports (also under `try: ... except
ImportError`), functions and classes (decorated or not), assignments of literals and of constructor or factory
calls (`model = Net()`, `cfg = GPTConfig(n_layer=2)`, `default_cfgs = _cfg(...)`), docstrings, `__all__`, type
aliases, and `if __name__ == "__main__":` blocks (never run on import). A few calls are kept for their harmless
effect on the process (seeds, `sys.path.append`, warning filters, `torch.fx.wrap`, registries, `print`).

A `for` loop is judged by what it runs: filling a table of configs declares, calling anything for its effect
does not. Anything else marks a script: a `while` loop or `with` block, a bare call kept for its side effect (`main()`,
`trainer.fit(...)`), file, process and network operations (`os.remove`, `open`, `torch.save`, `shutil`,
`subprocess`, downloads, `from_pretrained`), argument parsing, wherever they appear in what the top level runs:
assignments, class bodies, decorators, default values, and the bodies of the file's own functions and classes
that the top level calls. Such a file is not imported; its source checks still run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Callable, Collection, Iterable, Iterator

# Modules whose every function touches files, processes, the network or the machine.
_HAZARD_MODULES = frozenset({
    "shutil", "subprocess", "socket", "urllib", "requests", "httpx", "http", "ftplib", "smtplib", "webbrowser",
    "tempfile", "multiprocessing", "glob", "pickle", "dill", "joblib", "zipfile", "tarfile", "wandb", "mlflow",
    "neptune", "comet_ml", "ray", "wget", "gdown", "signal", "ctypes",
})
# Dotted names that do the same, and prefixes of such names.
_HAZARD_CALLS = frozenset({
    "os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.rename", "os.renames", "os.replace", "os.makedirs",
    "os.mkdir", "os.system", "os.popen", "os.kill", "os.killpg", "os.chdir", "os.chmod", "os.chown", "os.symlink",
    "os.link", "os.truncate", "os.fork", "os.forkpty", "os._exit", "os.abort", "os.listdir", "os.scandir",
    "os.walk", "sys.exit", "torch.save", "torch.load", "torch.cuda.set_device", "numpy.fromfile", "numpy.memmap",
    "numpy.genfromtxt",
})
_HAZARD_PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn", "torch.hub.", "torch.utils.model_zoo.", "numpy.save",
                    "numpy.load", "pandas.read_")
_HAZARD_BUILTINS = frozenset({"open", "input", "exec", "eval", "exit", "quit", "breakpoint", "__import__"})
# Method or function names that write, read, download, parse the command line, train or start something.
_HAZARD_NAMES = frozenset({
    "parse_args", "parse_known_args", "parse_intermixed_args", "write", "writelines", "write_text", "write_bytes",
    "unlink", "rmdir", "rmtree", "mkdir", "makedirs", "touch", "rename", "save", "savefig", "save_pretrained",
    "push_to_hub", "to_csv", "dump", "download", "download_url", "urlretrieve", "urlopen", "from_pretrained",
    "load_dataset", "load_state_dict_from_url", "hf_hub_download", "snapshot_download", "fit", "backward", "step",
    "run", "start", "launch", "spawn", "init", "init_process_group", "Fire", "read", "read_text", "read_bytes",
    "readlines", "readline", "load", "safe_load", "full_load", "imread", "imwrite", "main", "File", "SummaryWriter", "Popen", "Pool", "ThreadPool", "ProcessPoolExecutor",
    "ThreadPoolExecutor", "Process", "FileHandler", "RotatingFileHandler", "TimedRotatingFileHandler",
})
# What a constructor may call to read a text file (its config): building then stays building.
_READERS = frozenset({"json.load", "json.loads", "yaml.safe_load", "yaml.full_load", "tomllib.load", "toml.load"})
_READ_METHODS = frozenset({"read", "read_text", "readlines", "readline"})
# Keyword arguments that make a constructor download something.
_DOWNLOADING = ("pretrained", "download", "weights")
# Constructor parameters that turn a download on: a plan builds with them off (`auditor.static.plan`).
DOWNLOAD_FLAGS = ("pretrained", "download", "pretrained_backbone", "use_pretrained", "load_pretrained", "imagenet_pretrained")

# Calls a model file makes for their effect on the process, harmless to the tool (bare statements).
_HARMLESS_CALLS = frozenset({
    "print", "pprint.pprint", "sys.path.append", "sys.path.insert", "sys.path.extend", "sys.setrecursionlimit",
    "torch.manual_seed", "torch.fx.wrap", "torch.use_deterministic_algorithms", "torch.set_grad_enabled",
    "torch.autograd.set_detect_anomaly", "torch.cuda.manual_seed", "torch.cuda.manual_seed_all",
    "torch.random.manual_seed", "random.seed", "numpy.random.seed", "numpy.set_printoptions", "matplotlib.use",
    "os.environ.setdefault", "os.environ.update", "__all__.append", "__all__.extend", "logging.basicConfig",
    "logging.captureWarnings", "logging.disable",
})
_HARMLESS_PREFIXES = ("warnings.", "torch.set_", "torch.backends.", "torch._dynamo.", "torch._C._jit_set", "torch.jit._state.")
_HARMLESS_METHODS = frozenset({  # on a name the file assigned at top level (a logger, a parser, a model)
    "debug", "info", "warning", "warn", "error", "critical", "exception", "log", "setLevel", "addHandler",
    "add_argument", "add_argument_group", "add_mutually_exclusive_group", "set_defaults", "eval",
    "requires_grad_", "to", "cpu", "cuda", "float", "half", "double", "bfloat16", "apply", "update", "append",
    "extend", "add", "setdefault",
})


@dataclass(frozen=True)
class Hazard:
    """What would run on import, and where."""

    line: int
    what: str  # "`os.remove(...)`", "a `for` loop"

    def __str__(self) -> str:
        return f"{self.what} at line {self.line} would run on import"


def import_hazard(tree: ast.Module) -> Hazard | None:
    """The first top-level statement that is not a declaration, or None when the file is safe to import."""
    return _Checker(tree).statements(tree.body)


Elsewhere = Callable[[str], "tuple[bool, Hazard | None]"]  # an imported name -> (a function of the repository?, its hazard)


def constructor_hazards(tree: ast.Module, elsewhere: Elsewhere | None = None) -> Callable[[str], Hazard | None]:
    """For a class (or function) of the file, what building it (calling it) would do that a declaration does not
    (downloading weights, writing files, starting processes; reading a text config is building): its `__init__`
    and the methods it calls on `self`. `elsewhere` checks the functions it imports from the repository's other
    files by their code, not their names (a2c's `from utils import init` initializes weights)."""
    checker = _Checker(tree)
    checker.constructors = True
    checker.elsewhere = elsewhere
    return lambda name: checker.body_hazard(name) if name in checker.classes or name in checker.functions else None


def module_statements(body: Iterable[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements importing a module runs: the top level and the blocks of its `if`/`try`/`for`
    statements, without `if __name__ == "__main__":` blocks."""
    for statement in body:
        yield statement
        if isinstance(statement, ast.For):
            yield from module_statements([*statement.body, *statement.orelse])
        elif isinstance(statement, ast.If):
            if not is_main_guard(statement.test):
                yield from module_statements(statement.body)
            yield from module_statements(statement.orelse)
        elif isinstance(statement, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            for block in (statement.body, *[h.body for h in statement.handlers], statement.orelse, statement.finalbody):
                yield from module_statements(block)


def is_main_guard(test: ast.expr) -> bool:
    """`__name__ == "__main__"`, either way round."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    texts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(texts) == 1


def import_aliases(body: Iterable[ast.stmt]) -> dict[str, str]:
    """Local name -> what it imports: `np` -> `numpy`, `rmtree` -> `shutil.rmtree`."""
    aliases: dict[str, str] = {}
    for statement in module_statements(body):
        if isinstance(statement, ast.Import):
            for alias in statement.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    root = alias.name.split(".")[0]
                    aliases[root] = root
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
            for alias in statement.names:
                if alias.name != "*":
                    aliases[alias.asname or alias.name] = f"{statement.module}.{alias.name}"
    return aliases


def dotted_name(node: ast.expr, aliases: dict[str, str] | None = None) -> str | None:
    """`np.random.seed` -> "numpy.random.seed" (imports resolved); None when the root is not a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    root = (aliases or {}).get(node.id, node.id)
    return ".".join([root, *reversed(parts)])


class _Checker:
    def __init__(self, tree: ast.Module) -> None:
        self.aliases = import_aliases(tree.body)
        self.functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = {}
        self.classes: dict[str, ast.ClassDef] = {}
        self.assigned: set[str] = set()
        for statement in module_statements(tree.body):
            if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.functions[statement.name] = statement
            elif isinstance(statement, ast.ClassDef):
                self.classes[statement.name] = statement
            elif isinstance(statement, (ast.Assign, ast.AnnAssign, ast.For)):
                targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
                self.assigned.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        self.local = set(self.functions) | set(self.classes) | self.assigned | set(self.aliases)
        self._bodies: dict[str, Hazard | None] = {}
        self.constructors = False  # checking constructors a plan builds (download flags turned off), not an import
        self.controlled: set[str] = set()  # download flags that are parameters of the function being checked
        self.elsewhere: Elsewhere | None = None  # constructors: the repository's functions this file imports

    # --- statements the import runs -------------------------------------------------------------------------
    def statements(self, body: Iterable[ast.stmt]) -> Hazard | None:
        for statement in body:
            hazard = self.statement(statement)
            if hazard is not None:
                return hazard
        return None

    def statement(self, node: ast.stmt) -> Hazard | None:
        if isinstance(node, ast.Raise):  # an import guard refuses with an error; an exit ends a script
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = dotted_name(raised) if raised is not None else None
            return Hazard(node.lineno, f"`raise {name}`") if name in ("SystemExit", "KeyboardInterrupt") else None
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass, ast.Global, ast.Nonlocal, ast.Delete)):
            return None
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            arguments = node.args
            return self.expressions([*_decorator_arguments(node), *arguments.defaults, *[d for d in arguments.kw_defaults if d]])
        if isinstance(node, ast.ClassDef):  # a class body runs on import
            return self.expressions([*_decorator_arguments(node), *node.bases, *[k.value for k in node.keywords]]) or self.statements(node.body)
        if isinstance(node, ast.Expr):
            if isinstance(node.value, ast.Call):
                return self.bare_call(node.value)
            return self.expressions([node.value])
        if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            return self.expressions([node.value] if node.value is not None else [])
        if isinstance(node, ast.If):
            if is_main_guard(node.test):
                return self.statements(node.orelse)
            return self.expressions([node.test]) or self.statements(node.body) or self.statements(node.orelse)
        if isinstance(node, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            blocks = [node.body, *[h.body for h in node.handlers], node.orelse, node.finalbody]
            return self.expressions([h.type for h in node.handlers if h.type]) or next(
                (hazard for block in blocks if (hazard := self.statements(block)) is not None), None)
        if isinstance(node, ast.For):  # a loop that fills tables (timm's configs) declares; one that calls, runs
            return self.expressions([node.iter]) or self.statements(node.body) or self.statements(node.orelse)
        if isinstance(node, ast.Assert):
            return self.expressions([node.test])
        if isinstance(node, getattr(ast, "TypeAlias", ())):
            return None
        return Hazard(node.lineno, _statement_name(node))

    def bare_call(self, call: ast.Call) -> Hazard | None:
        """A call kept only for its effect: harmless ones are listed, anything else makes a script."""
        name = dotted_name(call.func, self.aliases)
        hazard = self.expressions([call])
        if hazard is not None or name is None:
            return hazard or Hazard(call.lineno, f"`{_source(call.func)}(...)`")
        root, last = name.split(".")[0], name.rsplit(".", 1)[-1]
        if name in _HARMLESS_CALLS or name.startswith(_HARMLESS_PREFIXES) or last.startswith("register"):
            return None
        if "." in name and root in self.assigned and last in _HARMLESS_METHODS:
            return None
        return Hazard(call.lineno, f"a call of `{_source(call.func)}(...)`")

    # --- expressions the import evaluates -------------------------------------------------------------------
    def expressions(self, nodes: Iterable[ast.expr]) -> Hazard | None:
        for node in nodes:
            for call in _calls(node):
                hazard = self.call(call)
                if hazard is not None:
                    return hazard
        return None

    def call(self, call: ast.Call) -> Hazard | None:
        if self.constructors and _only_reads(call, self.aliases, self.local):
            return None  # a constructor reading its config file builds the model it describes
        if self.elsewhere is not None and isinstance(call.func, ast.Name) and call.func.id not in self.functions and call.func.id not in self.classes:
            local, inner = self.elsewhere(call.func.id)
            if local:  # the repository's own function: what its code does, not what its name suggests
                return Hazard(call.lineno, f"`{call.func.id}(...)` ({inner.what} at line {inner.line} of its file)") if inner is not None else None
        if _is_hazard(call, self.aliases, self.local, self.controlled):
            return Hazard(call.lineno, f"`{_source(call.func)}(...)`")
        name = call.func.id if isinstance(call.func, ast.Name) else None
        if name in self.functions or name in self.classes:  # the file's own code runs: check what it does
            inner = self.body_hazard(name)
            if inner is not None:
                return Hazard(call.lineno, f"`{name}(...)` ({inner.what} at line {inner.line})")
        for argument in call.args:  # `model.apply(init_weights)` runs init_weights
            if isinstance(argument, ast.Name) and argument.id in self.functions:
                inner = self.body_hazard(argument.id)
                if inner is not None:
                    return Hazard(call.lineno, f"`{_source(call.func)}({argument.id})` ({inner.what} at line {inner.line})")
        return None

    def body_hazard(self, name: str) -> Hazard | None:
        """What a call of the file's own function (or construction of its own class: its `__init__` and the
        methods that calls on `self`) would do at import: hazardous calls, `while` loops, and the same in the
        local code it calls."""
        if name in self._bodies:
            return self._bodies[name]
        self._bodies[name] = None  # recursion: assume safe while checking
        found = next((h for part in self._run_on_call(name) if (h := self._block_hazard(part)) is not None), None)
        self._bodies[name] = found
        return found

    def _run_on_call(self, name: str) -> list[ast.AST]:
        if name in self.functions:
            return [self.functions[name]]
        methods = {m.name: m for m in self.classes[name].body if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))}
        reached, pending = [], ["__init__"]
        while pending:
            method = methods.pop(pending.pop(), None)
            if method is None:
                continue
            reached.append(method)
            pending.extend(n.func.attr for n in ast.walk(method) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                           and isinstance(n.func.value, ast.Name) and n.func.value.id == "self")
        return reached

    def _block_hazard(self, definition: ast.AST) -> Hazard | None:
        if self.constructors and isinstance(definition, (ast.FunctionDef, ast.AsyncFunctionDef)):  # `pretrained=pretrained`: the plan decides
            arguments = definition.args
            self.controlled = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]} & set(DOWNLOAD_FLAGS)
        for node in ast.walk(definition):
            if isinstance(node, ast.While):
                return Hazard(node.lineno, "a `while` loop")
            if isinstance(node, ast.Call):
                hazard = self.call(node)
                if hazard is not None:
                    return hazard
        return None


def _is_hazard(call: ast.Call, aliases: dict[str, str], local: set[str], controlled: Collection[str] = ()) -> bool:
    name = dotted_name(call.func, aliases)
    last = call.func.attr if isinstance(call.func, ast.Attribute) else (call.func.id if isinstance(call.func, ast.Name) else "")
    if last in _HAZARD_NAMES or any(_downloads(k, controlled) for k in call.keywords):
        return True
    if name is None:
        return False
    if "." not in name and name in _HAZARD_BUILTINS and name not in local:
        return True
    return name.split(".")[0] in _HAZARD_MODULES or name in _HAZARD_CALLS or name.startswith(_HAZARD_PREFIXES)


def _only_reads(call: ast.Call, aliases: dict[str, str], local: set[str]) -> bool:
    """`open(path)` for reading, `.read_text()`, `json.load(f)`, `yaml.safe_load(f)`: reading a text file,
    which a constructor may do to build what the file describes (downloads, writes, checkpoints are not this)."""
    name = dotted_name(call.func, aliases)
    if name == "open" and "open" not in local:
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        return mode is None or (isinstance(mode, ast.Constant) and isinstance(mode.value, str) and not set(mode.value) & set("wax+"))
    if name in _READERS:
        return True
    return isinstance(call.func, ast.Attribute) and call.func.attr in _READ_METHODS and not call.keywords


def _decorator_arguments(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> list[ast.expr]:
    """A decorator only registers or wraps (`@hydra.main(...)`, `@register_model`): what runs on import is the
    evaluation of its arguments."""
    found: list[ast.expr] = []
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call):
            found.extend([*decorator.args, *[k.value for k in decorator.keywords]])
    return found


def _downloads(keyword: ast.keyword, controlled: Collection[str] = ()) -> bool:
    """`pretrained=True`, `download=True`, `weights="DEFAULT"`: the constructor fetches files (unless the value
    is a download flag of the constructor being checked, which a plan turns off)."""
    if keyword.arg not in _DOWNLOADING:
        return False
    value = keyword.value
    if isinstance(value, ast.Name) and value.id in controlled:
        return False
    return not (isinstance(value, ast.Constant) and value.value in (None, False, 0, ""))


def _calls(node: ast.expr) -> Iterator[ast.Call]:
    """The calls an expression makes when evaluated (a lambda's body is not evaluated)."""
    stack: list[ast.AST] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Lambda):
            stack.extend(current.args.defaults)
            continue
        if isinstance(current, ast.Call):
            yield current
        stack.extend(ast.iter_child_nodes(current))


def _statement_name(node: ast.stmt) -> str:
    names = {ast.For: "a `for` loop", ast.AsyncFor: "an `async for` loop", ast.While: "a `while` loop",
             ast.With: "a `with` block", ast.AsyncWith: "an `async with` block"}
    return names.get(type(node), f"a `{type(node).__name__.lower()}` statement")


def _source(node: ast.AST, limit: int = 40) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 3] + "..."
