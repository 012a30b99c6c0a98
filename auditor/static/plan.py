"""What to build, with what, and what to feed: a plan for every class (and factory) a repository file defines,
made in the parent from the source alone and carried to the child that builds the models.

A class's constructor arguments come, in this order, from:

1. the first call of it in the repository whose arguments all resolve (`reader.py`): "built as in train.py:41";
2. the first call that resolves once the values it leaves open are filled by defaults and guesses;
3. its defaults ("from defaults"), with the required parameters it has guessed from conventional names
   (`num_classes=10`, `in_channels=3`, `dim=64`, `heads=4`, `vocab_size=100`...), config objects built with
   their own defaults, and, for a parameter that takes a module (`backbone: nn.Module`, `model`), a model class
   of the repository: "built with guessed arguments: num_classes=10".

A class another model class or factory of the repository uses is a *building block*: it is audited inside
that model (`users`), not on its own. The forward calls the repository makes on an instance of the class
(`model(x, t)`) travel with the plan (`forward_calls`); the one the input guesses start from is its `call`
(`specs.CallHint`, read by `loading/guesses.py`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from auditor.specs import SCALAR_TYPES, ArgumentHint, CallHint, ScalarSpec
from auditor.static.reader import Argument, CallSite, External, ModuleReading, _Frame, plan_value
from auditor.static.repository import Repository, repository_files, signature
from auditor.static.safety import DOWNLOAD_FLAGS, constructor_hazards, is_main_guard, module_statements
from auditor.static.values import CONFIG_PARAMETERS, CONFIG_SUFFIXES, Call, DefaultConfig, Namespace, Ref, Unknown, describe, is_known, tensor_spec

_MODEL_BASES = ("Module", "LightningModule", "PreTrainedModel", "ModelMixin")
MODULE_PARAMETERS = frozenset({
    "model", "backbone", "net", "network", "module", "base_model", "base_network", "encoder", "decoder", "inner",
    "wrapped", "feature_extractor", "features_extractor", "trunk", "body", "generator", "discriminator", "teacher",
    "student", "denoise_fn", "denoiser", "unet", "actor", "critic", "policy", "ema_model", "online_network",
    "target_network", "base_encoder", "classifier", "head", "layer", "block", "submodule",
})
_MISNAMED_INITS = ("init", "_init", "_init_", "__init", "__init_", "__int__", "__initi__", "__inti__", "initialize")


class _Required:
    """The default of a parameter that has none; pickles as the one instance (plans cross to the child)."""

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()

# Conventional values for well-known parameter names, one pattern per kind (matched on the whole name).
WIDTH = 64
_GUESSES: list[tuple[re.Pattern[str], Any]] = [(re.compile(p), v) for p, v in [
    (r"(num_|n_|n)?class(es)?|num_labels|n_?labels|nclass(es)?|num_outputs_classes|class_num|num_class", 10),
    (r"(in|input|num|n|img|image)_?(channels?|chans?|ch|c|planes_in)|nc|channels|in_dim_channels", 3),
    (r"(out|output)_?(channels?|chans?|ch|c)", 3),
    (r"(num_|n_|n)?(layers?|blocks?|res_blocks|stages)|depths?|n_?layer", 2),
    (r"(num_|n_|n)?heads?|nhead|num_attention_heads|attn_heads", 4),
    (r"dim_head|head_dim|d_head|d_k|d_v", 16),
    (r"(src_|tgt_|trg_|input_|output_)?(vocab(_size|_len)?|n_?tokens?|num_tokens|n_?vocab|num_embeddings|num_words|n_words|num_chars)", 100),
    (r"block_size|seq_?len(gth)?|max_?len(gth)?|max_seq_len(gth)?|context_length|n_ctx|n_positions|max_position_embeddings|num_positions", 32),
    (r"image_size|img_size|resolution|img_res|image_res|input_resolution|img_dim", 32),
    (r"patch(_size)?", 4),
    (r"kernel(_size)?|k|ksize", 3),
    (r"stride|dilation|groups", 1),
    (r"(src_|tgt_|trg_|input_|output_)?pad(ding)?(_token)?_?(idx|id|index)", 1),  # torchtext's <pad>: pad_idx, padding_idx, pad_token_id
    (r"padding|pad", 1),
    (r"(attn_|proj_|emb_|embed_|hidden_)?(dropout|drop)(_rate|_prob|_p)?|p|drop_path(_rate)?|dropout_ratio", 0.1),
    (r"(num_|n_)?actions?(_dim|_size|_space_size|_n)?|act_dim|action_space_dim|num_outputs|n_actions", 4),
    (r"(num_|n_)?(timesteps|steps|time_steps)|t_max", 100),
    (r"device", "cpu"),
    (r"(in|input|out|output|hidden|hid|emb|embed|embedding|latent|z|model|feature|feat|state|obs|observation|ff|mlp|inner|"
     r"proj|key|query|value|code|cond|context|time|t|noise|enc|dec|base)?_?(dim|dims|size|features|feats|units|width|"
     r"planes|channels|chans|ch|hidden|hiddens)|d_model|n_embd|n_hid|nhid|nfeat|nz|ngf|ndf|nf|inplanes|in_planes|"
     r"planes|num_inputs|hidden|hid|width|latent|emb|embed|features|num_hiddens|num_features|n_features|n_hidden|"
     r"dim_in|dim_out|dim_hidden|in_features|out_features|input_shape|obs_shape", WIDTH),
]]
_IN_CHANNELS = re.compile(r"(in|input|num|n|img|image)_?(channels?|chans?|ch|c)|nc|channels")
_OUT_CHANNELS = re.compile(r"(out|output)_?(channels?|chans?|ch|c)")


@dataclass(frozen=True)
class Parameter:
    name: str
    default: Any = REQUIRED  # the default's value as read (`Unknown` when it is not a literal)
    annotation: str | None = None  # as written: "int", "nn.Module", "GPTConfig"
    annotation_ref: Any = None  # the annotation resolved (a `Ref` to a local class), or None
    keyword_only: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Build:
    """How to build a class or call a factory: arguments as values (`values.py`), and where they come from."""

    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()
    site: str | None = None  # "train.py:41": the call it copies
    guessed: tuple[str, ...] = ()  # "num_classes=10" for each guessed value
    configured: tuple[str, ...] = ()  # "config=GPTConfig()": config objects built with their own defaults
    offline: tuple[str, ...] = ()  # download flags turned off ("pretrained=False")

    @property
    def source(self) -> str:
        """What the result says about how the model was built."""
        offline = f"; {', '.join(self.offline)} (nothing is downloaded)" if self.offline else ""
        return self._how() + offline

    def _how(self) -> str:
        if self.site is not None:
            text = f"built as in {self.site}"
            return text + (f"; guessed {', '.join(self.guessed)}" if self.guessed else "")
        configured = f" ({', '.join(self.configured)})" if self.configured else ""
        if self.guessed:
            return f"built with guessed arguments: {', '.join(self.guessed)}{configured.replace(' (', '; ', 1).rstrip(')')}"
        return f"built from its defaults{configured}"

    @property
    def from_defaults(self) -> bool:
        return self.site is None and not self.guessed and not self.offline


@dataclass
class ClassPlan:
    """One class or factory of a file: how to build it, or why not; what it is part of; what feeds it."""

    name: str
    line: int
    kind: str  # "class" or "factory"
    model: bool  # an nn.Module subclass as far as the source tells (the child decides by the runtime MRO)
    parameters: tuple[Parameter, ...] = ()
    build: Build | None = None
    reason: str | None = None  # without a build: why not ("needs constructor arguments: num_classes")
    users: tuple[str, ...] = ()  # labels of the repository's models that build it: audited inside them
    forward_calls: tuple[CallSite, ...] = ()  # `model(x, t)`: the repository's calls of an instance
    call: CallHint | None = None  # the one of them the input guesses start from
    misnamed_init: str | None = None  # `def init(...)` where `__init__` was meant
    open_ended: bool = False  # takes any keyword (`**kwargs`, or a library base class's constructor)
    hazard: str | None = None  # what its constructor would do beyond building layers ("`vgg19_bn(...)` at line 40")
    none_defaults: tuple[str, ...] = ()  # parameters whose default is None (a build from defaults may need them)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters if p.required)


@dataclass
class FilePlan:
    """Every class and factory a file defines, by name."""

    path: str
    label: str  # how results name the file
    root: str = ""  # the repository's root folder
    classes: dict[str, ClassPlan] = field(default_factory=dict)
    factories: dict[str, ClassPlan] = field(default_factory=dict)
    nested: dict[str, tuple[int, str]] = field(default_factory=dict)  # model classes the import does not define: (line, where)
    notebook_starts: tuple[tuple[int, int], ...] = ()  # notebooks: (first line in the joined code, cell number)
    code: str | None = None  # notebooks: the declaring source the child runs (same line numbers)

    def where(self, line: int) -> tuple[str, int]:
        """(file as results name it, line) for a line of this file's code; a notebook's `nb.ipynb:cell 3`."""
        if not self.notebook_starts:
            return self.label, line
        start, cell = self.notebook_starts[0]
        for first, number in self.notebook_starts:
            if first > line:
                break
            start, cell = first, number
        return f"{self.label}:cell {cell}", line - start + 1

    def plan_for(self, name: str) -> ClassPlan | None:
        return self.classes.get(name) or self.factories.get(name)

    def models(self) -> list[ClassPlan]:
        """The model classes (as far as the source tells) and factories of the file."""
        return [c for c in self.classes.values() if c.model] + list(self.factories.values())


_SHARED: dict[Path, tuple[tuple[tuple[str, int, int], ...], Planner]] = {}
_SHARED_ROOTS = 8


def shared_planner(root: Path, project: Any) -> Planner:
    """The planner of a repository, kept for this process while none of its files changes (the Python API and
    the test suite audit the same repository again and again; reading it once is enough)."""
    files = repository_files(root)
    stamp = signature(files)
    cached = _SHARED.get(root)
    if cached is not None and cached[0] == stamp and _configs_unchanged(cached[1].reader.configs):
        return cached[1]
    planner = Planner(Repository(root, project, files))
    if len(_SHARED) >= _SHARED_ROOTS:
        _SHARED.pop(next(iter(_SHARED)))
    _SHARED[root] = (stamp, planner)
    return planner


def call_hint(calls: tuple[CallSite, ...], where: Callable[[str, int], str]) -> CallHint | None:
    """The repository's call of a model that its input guesses start from: of the calls that show all their
    arguments (no `*batch` of unknown length), the one that makes the most tensors of literal sizes
    (`model(torch.randn(4, 3, 64, 64), t)`), the first among equals."""
    shown = [c for c in calls if not any(a.text == "*..." for a in c.args)]
    if not shown:
        return None
    best = max(shown, key=lambda c: sum(tensor_spec(a.value) is not None for a in (*c.args, *(a for _, a in c.kwargs))))

    def hint(argument: Argument) -> ArgumentHint:
        if isinstance(argument.value, SCALAR_TYPES):  # `model(src, trg, 0)`: the value itself, no tensor
            return ArgumentHint(argument.text, str(ScalarSpec(argument.value)))
        return ArgumentHint(argument.text, tensor_spec(argument.value))

    return CallHint(where(best.file, best.line), tuple(hint(a) for a in best.args), tuple((k, hint(a)) for k, a in best.kwargs))


def _configs_unchanged(configs: dict[Path, tuple[int, int] | None]) -> bool:
    """Whether the config files the reading looked for are as they were (absent ones still absent)."""
    for path, stamp in configs.items():
        try:
            status = path.stat()
        except OSError:
            if stamp is not None:
                return False
            continue
        if stamp != (status.st_size, status.st_mtime_ns):
            return False
    return True


class Planner:
    """Plans for the files of one repository; each file planned once."""

    def __init__(self, repository: Repository) -> None:
        self.repository = repository
        self.reader = repository.reader
        self._params: dict[tuple[str, str], tuple[tuple[Parameter, ...], bool]] = {}
        self._plans: dict[Path, FilePlan] = {}
        self._building: set[tuple[str, str]] = set()
        self._opaque: set[tuple[str, str]] = set()  # classes whose constructor is a library base class's
        self._checkers: dict[Path, Callable[[str], Any]] = {}
        self._known: tuple[int, int] = (-1, -1)  # (files read, scopes read) when the tables below were made
        self._models: set[tuple[str, str]] = set()
        self._factories: set[tuple[str, str]] = set()
        self._users: dict[tuple[str, str], list[str]] = {}

    def prepare(self, paths: list[Path]) -> None:
        """Read what the repository says about the classes and functions these files define (all at once:
        one pass over the repository's files for a whole folder)."""
        names: set[str] = set()
        for path in paths:  # the files themselves first: which of their functions return a model
            module = self.reader.module(path.resolve())
            if module is not None:
                self.reader.read(module.path)
                names.update(module.classes)
                names.update(n for n, returns in module.returns.items() if any(isinstance(r, Call) for r in returns))
        self.repository.read_for(names)
        state = (len(self.reader.loaded), len(self.reader.scopes_read))
        if state != self._known:
            self._models = self._model_classes()
            self._factories = self._factory_functions()
            self._users = self._building_blocks()
            self._known = state

    # --- what the repository defines --------------------------------------------------------------------------
    def _model_classes(self) -> set[tuple[str, str]]:
        """(path, name) of every class deriving, through the repository's own classes, from an nn.Module base."""
        found: set[tuple[str, str]] = set()
        bases = {(str(m.path), name): self._bases(m, node) for m in self.reader.modules.values() for name, node in m.classes.items()}
        changed = True
        while changed:
            changed = False
            for key, resolved in bases.items():
                if key not in found and any((isinstance(b, Ref) and b.path is not None and (b.path, b.name) in found) or _is_model_base(b) for b in resolved):
                    found.add(key)
                    changed = True
        return found

    def _bases(self, module: ModuleReading, node: ast.ClassDef) -> list[Any]:
        frame = _Frame(module, recording=False)
        resolved = []
        for base in node.bases:
            while isinstance(base, ast.Subscript):  # Generic[T], nn.Module[...]
                base = base.value
            resolved.append(self.reader.evaluate(base, frame))
        return resolved

    def _factory_functions(self) -> set[tuple[str, str]]:
        """Top-level functions that return an instance of a model class of the repository."""
        found = set()
        for module in self.reader.modules.values():
            for name, returns in module.returns.items():
                if any(isinstance(r, Call) and _builds_model(r.func, self._models) for r in returns):
                    found.add((str(module.path), name))
        return found

    def _building_blocks(self) -> dict[tuple[str, str], list[str]]:
        """(path, name) of a model class or factory -> labels of the other model classes and factories whose code
        uses it (`separable(8, 16, 1)` in a MobileNet's constructor)."""
        users: dict[tuple[str, str], list[str]] = {}
        for module in self.reader.modules.values():
            owners = [(n, c) for n, c in module.classes.items() if (str(module.path), n) in self._models]
            owners += [(n, f) for n, f in module.functions.items() if (str(module.path), n) in self._factories]
            frame = _Frame(module, recording=False)
            for name, node in owners:
                label = f"{self.repository.label(module.path)}:{name}"
                seen: set[tuple[str, str]] = set()
                for reference in ast.walk(node):
                    if not (isinstance(reference, ast.Name) and isinstance(reference.ctx, ast.Load)) and not isinstance(reference, ast.Attribute):
                        continue
                    if isinstance(reference, ast.Attribute) and not isinstance(reference.value, ast.Name):
                        continue
                    value = self.reader.evaluate(reference, frame)
                    if isinstance(value, Ref) and value.path is not None:
                        key = (value.path, value.name)
                        if key != (str(module.path), name) and (key in self._models or key in self._factories) and key not in seen:
                            seen.add(key)
                            users.setdefault(key, []).append(label)
        return users

    # --- plans ------------------------------------------------------------------------------------------------
    def file_plan(self, path: Path) -> FilePlan:
        path = path.resolve()
        if path not in self._plans:
            self.prepare([path])
            self._plans[path] = self._plan_file(path)
        return self._plans[path]

    def _plan_file(self, path: Path) -> FilePlan:
        plan = FilePlan(str(path), self.repository.label(path), str(self.repository.root))
        module = self.reader.module(path)
        notebook = self.repository.notebooks.get(path)
        if notebook is not None:
            plan.notebook_starts = tuple(zip(notebook.starts, notebook.cells))  # type: ignore[attr-defined]
            plan.code = notebook.declaring_source()  # type: ignore[attr-defined]
        if module is None:
            return plan
        for statement in module_statements(module.tree.body):
            if isinstance(statement, ast.ClassDef) and statement.name in module.classes and module.classes[statement.name] is statement:
                plan.classes[statement.name] = self._plan_class(module, statement)
        for name, function in module.functions.items():
            if (str(path), name) in self._factories:
                plan.factories[name] = self._plan_factory(module, function)
        plan.nested = self._nested_models(module)
        return plan

    def _nested_models(self, module: ModuleReading) -> dict[str, tuple[int, str]]:
        """Model classes defined where importing the file does not reach them (inside a function, another
        class, or the main guard): name -> (line, where)."""
        top = {id(node) for node in module.classes.values()}
        found: dict[str, tuple[int, str]] = {}

        def visit(node: ast.AST, scope: str) -> None:
            for child in ast.iter_child_nodes(node):
                inner = scope
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    inner = f"inside `{child.name}()`"
                elif isinstance(child, ast.ClassDef):
                    if id(child) not in top and child.name not in module.classes and child.name not in found and scope:
                        bases = self._bases(module, child)
                        if any(_is_model_base(b) or (isinstance(b, Ref) and (b.path or "", b.name) in self._models) for b in bases):
                            found[child.name] = (child.lineno, scope)
                    inner = f"inside class `{child.name}`"
                elif isinstance(child, ast.If) and is_main_guard(child.test):
                    inner = "under `if __name__ == \"__main__\":`"
                visit(child, inner)

        visit(module.tree, "")
        return found

    def _plan_class(self, module: ModuleReading, node: ast.ClassDef) -> ClassPlan:
        key = (str(module.path), node.name)
        parameters, open_ended = self.parameters(Ref(node.name, path=str(module.path)))
        plan = ClassPlan(node.name, node.lineno, "class", key in self._models, parameters,
                         users=tuple(self._users.get(key, ())), forward_calls=tuple(self.reader.forward_calls.get(key, ())),
                         misnamed_init=self._misnamed_init(module, node), open_ended=open_ended,
                         none_defaults=tuple(p.name for p in parameters if p.default is None))
        plan.build, plan.reason = self._choose(Ref(node.name, path=str(module.path)), parameters, open_ended, self.reader.sites.get(key, []))
        plan.call = call_hint(plan.forward_calls, self.repository.where)
        hazard = self._hazards(module)(node.name)
        plan.hazard = f"{hazard.what} at line {hazard.line}" if hazard is not None else None
        return plan

    def _hazards(self, module: ModuleReading) -> Callable[[str], Any]:
        if module.path not in self._checkers:
            self._checkers[module.path] = constructor_hazards(module.tree, lambda name: self._imported_hazard(module, name))
        return self._checkers[module.path]

    def _imported_hazard(self, module: ModuleReading, name: str) -> tuple[bool, Any]:
        """Whether `name` is a function `module` imports from another file of the repository, and what calling
        it would do beyond building."""
        imported = module.imports.get(name)
        if imported is None or imported[2] is None:
            return False, None
        source, level, member = imported
        path = self.repository.locate(module.path, source.split(".") if source else [], level)
        other = self.reader.module(path) if path is not None else None
        if other is None or member not in other.functions:
            return False, None
        return True, self._hazards(other)(member)

    def _plan_factory(self, module: ModuleReading, node: ast.FunctionDef | ast.AsyncFunctionDef) -> ClassPlan:
        key = (str(module.path), node.name)
        parameters = _parameters(self.reader, module, node, skip_self=False)
        open_ended = node.args.kwarg is not None
        returned = [r.func for r in module.returns.get(node.name, []) if isinstance(r, Call) and r.func.path is not None]
        calls = tuple(c for ref in dict.fromkeys(returned) for c in self.reader.forward_calls.get((ref.path or "", ref.name), ()))
        plan = ClassPlan(node.name, node.lineno, "factory", True, parameters, users=tuple(self._users.get(key, ())), open_ended=open_ended,
                         none_defaults=tuple(p.name for p in parameters if p.default is None), forward_calls=calls,
                         call=call_hint(calls, self.repository.where))
        plan.build, plan.reason = self._choose(Ref(node.name, path=str(module.path)), parameters, open_ended, self.reader.sites.get(key, []))
        return plan

    def parameters(self, ref: Ref) -> tuple[tuple[Parameter, ...], bool]:
        """A class's constructor parameters (after self), from its own `__init__` or the nearest local base's;
        and whether it takes any keyword (`**kwargs`)."""
        key = (ref.path or "", ref.name)
        if key not in self._params:
            self._params[key] = ((), True)  # a cycle of bases: assume anything goes
            self._params[key] = self._read_parameters(ref)
        return self._params[key]

    def _read_parameters(self, ref: Ref) -> tuple[tuple[Parameter, ...], bool]:
        module = self.reader.module(Path(ref.path or ""))
        node = module.classes.get(ref.name) if module is not None else None
        if module is None or node is None:
            return (), True
        init = next((s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "__init__"), None)
        if init is not None:
            return _parameters(self.reader, module, init, skip_self=True), init.args.kwarg is not None
        if _is_dataclass(node):
            return _dataclass_fields(self.reader, module, node), False
        for base in self._bases(module, node):
            if isinstance(base, Ref) and base.path is not None:
                return self.parameters(base)
            if not _plain_base(base):  # a library class's constructor (nn.Linear, timm's VisionTransformer)
                self._opaque.add((ref.path or "", ref.name))
                return (), True
        return (), False  # nn.Module's own constructor

    def _misnamed_init(self, module: ModuleReading, node: ast.ClassDef) -> str | None:
        names = {s.name for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))}
        if "__init__" in names or not self.parameters(Ref(node.name, path=str(module.path)))[0] == ():
            return None
        return next((n for n in _MISNAMED_INITS if n in names), None)

    # --- choosing the arguments -------------------------------------------------------------------------------
    def _choose(self, ref: Ref, parameters: tuple[Parameter, ...], open_ended: bool, sites: list[CallSite]) -> tuple[Build | None, str | None]:
        """The first call that resolves; else the call needing the fewest guesses; else defaults and guesses."""
        key = (ref.path or "", ref.name)
        if key in self._building:  # a class whose build needs itself (a recursive wrapper)
            return None, "needs constructor arguments: " + ", ".join(p.name for p in parameters if p.required)
        if key in self._opaque:
            return self._as_called(sites)
        self._building.add(key)
        try:
            best: tuple[int, Build] | None = None
            for site in sorted(sites, key=lambda s: (s.depth, not s.resolved)):
                build = self._from_site(ref, parameters, open_ended, site)
                if build is None:
                    continue
                if not build.guessed:
                    return build, None
                if best is None or len(build.guessed) < best[0]:
                    best = (len(build.guessed), build)
            fallback, missing = self._from_defaults(ref, parameters)
            if best is not None and (fallback is None or len(best[1].guessed) <= len(fallback.guessed) or self._guesses_a_model(fallback)):
                return best[1], None
            if fallback is not None:
                return fallback, None
            return None, "needs constructor arguments: " + ", ".join(missing)
        finally:
            self._building.discard(key)

    def _guesses_a_model(self, build: Build) -> bool:
        """Whether a build fills a module parameter with a model of its own choosing: any call of the
        repository's, however many of its sizes it guesses, says more about what the class wraps."""
        guessed = {g.split("=", 1)[0] for g in build.guessed}
        return any(name in guessed and isinstance(value, Call) and (value.func.path or "", value.func.name) in self._models
                   for name, value in build.kwargs)

    def _as_called(self, sites: list[CallSite]) -> tuple[Build | None, str | None]:
        """A class whose constructor is its library base's: only a call that resolves says how to build it."""
        for site in sites:
            if site.resolved and not any(a.text.startswith("*") for a in site.args):
                args = tuple(a.value for a in site.args)
                kwargs = tuple((k, a.value) for k, a in site.kwargs)
                if self._importable([args, kwargs]):
                    return Build(args, kwargs, site=self.repository.where(site.file, site.line) if args or kwargs else None), None
        return None, "needs the constructor arguments of its base class"

    def _from_site(self, ref: Ref, parameters: tuple[Parameter, ...], open_ended: bool, site: CallSite) -> Build | None:
        by_name = {p.name: p for p in parameters}
        positional = [p for p in parameters if not p.keyword_only]
        values: dict[str, Any] = {}
        if any(a.text.startswith("*") for a in site.args):
            return None  # a `*args` the reading could not spread
        if len(site.args) > len(positional):
            return None
        for parameter, argument in zip(positional, site.args):
            values[parameter.name] = argument.value
        for name, argument in site.kwargs:
            if name not in by_name and not open_ended:
                return None
            values[name] = argument.value
        filled = self._fill(ref, parameters, values)
        if filled is None:
            return None
        kwargs, guessed, configured = filled
        if not self._importable(kwargs, ref.path):
            return None
        where = self.repository.where(site.file, site.line) if site.args or site.kwargs else None  # `Net()`: its defaults
        offline = self._offline(parameters, kwargs)
        return Build(kwargs=tuple(kwargs.items()), site=where, guessed=tuple(guessed), configured=tuple(configured), offline=offline)

    def _from_defaults(self, ref: Ref, parameters: tuple[Parameter, ...]) -> tuple[Build | None, list[str]]:
        filled = self._fill(ref, parameters, {})
        if filled is None:
            return None, self._unguessable(ref, parameters)
        kwargs, guessed, configured = filled
        if not self._importable(kwargs, ref.path):
            return None, [p.name for p in parameters if p.required]
        offline = self._offline(parameters, kwargs)
        return Build(kwargs=tuple(kwargs.items()), guessed=tuple(guessed), configured=tuple(configured), offline=offline), []

    def _unguessable(self, ref: Ref, parameters: tuple[Parameter, ...]) -> list[str]:
        return [p.name for p in parameters if p.required and self._guess(ref, p, parameters) is None] or [p.name for p in parameters if p.required]

    def _fill(self, ref: Ref, parameters: tuple[Parameter, ...], values: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[str]] | None:
        """Keyword arguments for every parameter the call gives or must have: known values as given (nested
        calls of the repository's classes completed the same way), unknown ones from the default, else guessed;
        also what was guessed, and which config objects were built with their defaults."""
        kwargs: dict[str, Any] = {}
        guessed: list[str] = []
        configured: list[str] = []
        by_name = {p.name: p for p in parameters}
        open_ = [p for p in parameters if p.required and p.name not in values]
        for name, value in [*values.items(), *[(p.name, Unknown(p.name)) for p in open_]]:
            value = self._complete(value, guessed)
            parameter = by_name.get(name)
            if is_known(value):
                kwargs[name] = value
                continue
            if parameter is not None and not parameter.required:
                continue  # its default
            guess = self._guess(ref, parameter, parameters) if parameter is not None else None
            if guess is None:
                return None
            kwargs[name] = guess
            a_model = isinstance(guess, Call) and (guess.func.path or "", guess.func.name) in self._models
            (configured if isinstance(guess, (Call, DefaultConfig, Namespace)) and not a_model else guessed).append(f"{name}={describe(guess)}")
        return kwargs, guessed, configured

    @staticmethod
    def _offline(parameters: tuple[Parameter, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        """Download flags turned off (`pretrained=True` in the call or by default): the audit reads the
        architecture, and never fetches weights."""
        off = []
        for parameter in parameters:
            if parameter.name in DOWNLOAD_FLAGS and (kwargs.get(parameter.name) or (parameter.name not in kwargs and parameter.default not in (None, False, REQUIRED))):
                kwargs[parameter.name] = False
                off.append(f"{parameter.name}=False")
        return tuple(off)

    def _complete(self, value: Any, guessed: list[str], depth: int = 0) -> Any:
        """A call of a repository class inside a value (`Seq2Seq(Encoder(len(vocab), 256), ...)`), its open
        arguments filled like the outer ones."""
        if depth > 5:
            return value
        if isinstance(value, (list, tuple)):
            return type(value)(self._complete(v, guessed, depth + 1) for v in value)
        if not isinstance(value, Call) or value.func.path is None or is_known(value):
            return value
        parameters, open_ended = self.parameters(value.func)
        module = self.reader.module(Path(value.func.path))
        if module is None or value.func.name not in module.classes:
            return value
        positional = [p for p in parameters if not p.keyword_only]
        values = {p.name: v for p, v in zip(positional, value.args)}
        values.update(value.kwargs)
        inner: list[str] = []
        filled = self._fill(value.func, parameters, values)
        if filled is None:
            return value
        kwargs, inner, _ = filled
        guessed.extend(f"{g} ({value.func.name})" for g in inner)
        return Call(value.func, (), tuple(kwargs.items()), value.site)

    def _guess(self, ref: Ref, parameter: Parameter, parameters: tuple[Parameter, ...]) -> Any:
        """A conventional value for a required parameter, a config object with its defaults, or a model of the
        repository for a parameter that takes a module; None when nothing fits."""
        if takes_module(parameter):
            return self._some_model(ref, parameter)
        if isinstance(parameter.annotation_ref, Ref) and parameter.annotation_ref.path is not None:
            if (parameter.annotation_ref.path, parameter.annotation_ref.name) in self._models:
                return self._some_model(ref, parameter)
            return self._config_call(parameter.annotation_ref)
        if parameter.name.lower() in CONFIG_PARAMETERS:
            namespace = self._namespace_for(ref, parameter.name)
            config = self._module_config(ref)
            return namespace if namespace is not None else config if config is not None else DefaultConfig(parameter.name)
        name = parameter.name.lower()
        if _IN_CHANNELS.fullmatch(name) and any(_OUT_CHANNELS.fullmatch(p.name.lower()) for p in parameters):
            return WIDTH  # in and out channels alike: a block without a shortcut stays correct
        if _OUT_CHANNELS.fullmatch(name) and any(_IN_CHANNELS.fullmatch(p.name.lower()) for p in parameters):
            return WIDTH
        for pattern, value in _GUESSES:
            if pattern.fullmatch(name):
                if parameter.annotation in ("tuple", "list") or (parameter.annotation or "").startswith(("Tuple", "tuple", "List", "list", "Sequence")):
                    return (value, value) if isinstance(value, int) else None
                return value
        if parameter.annotation == "bool":
            return False
        return None

    def _module_config(self, ref: Ref) -> Any:
        """nanoGPT's `GPT(config)` next to its `GPTConfig` dataclass: the one `*Config` dataclass of the class's
        file, built with its defaults."""
        module = self.reader.module(Path(ref.path or ""))
        if module is None:
            return None
        configs = [name for name, node in module.classes.items() if _is_dataclass(node) and name.endswith(CONFIG_SUFFIXES)]
        return self._config_call(Ref(configs[0], path=ref.path)) if len(configs) == 1 else None

    def _config_call(self, cls: Ref) -> Any:
        parameters, _ = self.parameters(cls)
        filled = self._fill(cls, parameters, {})
        return Call(cls, (), tuple(filled[0].items())) if filled is not None else None

    def _namespace_for(self, ref: Ref, parameter: str) -> Namespace | None:
        """An `args` parameter read as `args.hidden`: a namespace of the repository's argparse defaults, when
        they have every attribute the class reads from it."""
        module = self.reader.module(Path(ref.path or ""))
        node = module.classes.get(ref.name) if module is not None else None
        if node is None or not self.reader.namespaces:
            return None
        read = {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == parameter}
        for defaults in self.reader.namespaces:
            if read and read <= set(defaults):
                return plan_value(Namespace(dict(defaults)))
        return None

    def _some_model(self, ref: Ref, parameter: Parameter) -> Any:
        """A model of the repository for a parameter that takes one: the class its annotation names, else the
        first model class of the same file, then of the repository, that builds without guesses."""
        wanted = parameter.annotation_ref
        if isinstance(wanted, Ref) and wanted.path is not None and (wanted.path, wanted.name) in self._models:
            choices = [wanted]
        else:
            same = [Ref(n, path=p) for p, n in sorted(self._models) if p == ref.path]
            others = [Ref(n, path=p) for p, n in sorted(self._models) if p != ref.path]
            choices = same + others
        fallback = None
        for choice in choices:
            if (choice.path, choice.name) == (ref.path, ref.name) or (choice.path or "", choice.name) in self._building:
                continue
            parameters, open_ended = self.parameters(choice)
            if any(takes_module(p) for p in parameters if p.required):
                continue
            build, _ = self._choose(choice, parameters, open_ended, self.reader.sites.get((choice.path or "", choice.name), []))
            if build is None:
                continue
            call = Call(choice, build.args, build.kwargs)
            if not build.guessed:
                return call
            fallback = fallback or call
        return fallback

    def _importable(self, value: Any, owner: str | None = None) -> bool:
        """Every repository file a value refers to may be imported (a script's classes are not built; a
        notebook's only by the notebook itself, `owner`)."""
        for ref in _refs(value):
            if ref.path is not None and Path(ref.path).suffix == ".py" and self.repository.project.import_blocker(Path(ref.path)) is not None:
                return False
            if ref.path is not None and Path(ref.path).suffix == ".ipynb" and owner is not None and ref.path != owner:
                return False  # another notebook's class: nothing imports it
        return True


def _builds_model(func: Ref, models: set[tuple[str, str]]) -> bool:
    """A call of a model class of the repository, or of torch.nn's (`nn.Sequential(...)`)."""
    if func.path is not None:
        return (func.path, func.name) in models
    return (func.module or "").startswith("torch.nn") and func.name[:1].isupper()


def _refs(value: Any, depth: int = 0) -> list[Ref]:
    if depth > 20:
        return []
    if isinstance(value, Ref):
        return [value]
    if isinstance(value, Call):
        return [value.func, *[r for v in value.args for r in _refs(v, depth + 1)], *[r for _, v in value.kwargs for r in _refs(v, depth + 1)]]
    if isinstance(value, (list, tuple)):
        return [r for v in value for r in _refs(v, depth + 1)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v, depth + 1)]
    return []


def _parameters(reader: Any, module: ModuleReading, function: ast.FunctionDef | ast.AsyncFunctionDef, *, skip_self: bool) -> tuple[Parameter, ...]:
    arguments = function.args
    positional = [*arguments.posonlyargs, *arguments.args]
    defaults: list[ast.expr | None] = [None] * (len(positional) - len(arguments.defaults)) + list(arguments.defaults)
    if skip_self and positional:
        positional, defaults = positional[1:], defaults[1:]
    frame = _Frame(module, recording=False)
    found = []
    for argument, default in [*zip(positional, defaults), *zip(arguments.kwonlyargs, arguments.kw_defaults)]:
        annotation = ast.unparse(argument.annotation) if argument.annotation is not None else None
        if annotation is not None and annotation[:1] in ("'", '"'):
            annotation = annotation[1:-1]
        resolved = _annotation_ref(reader, module, argument.annotation, frame)
        value = plan_value(reader.evaluate(default, frame)) if default is not None else REQUIRED
        found.append(Parameter(argument.arg, value, annotation, resolved, keyword_only=argument in arguments.kwonlyargs))
    return tuple(found)


def _annotation_ref(reader: Any, module: ModuleReading, annotation: ast.expr | None, frame: _Frame) -> Any:
    """The local class an annotation names (`config: GPTConfig`, `backbone: "ResNet"`, `Optional[Net]`)."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return None
    if isinstance(annotation, ast.Subscript):  # Optional[X] -> X
        inner = annotation.slice
        annotation = inner.elts[0] if isinstance(inner, ast.Tuple) and inner.elts else inner
    if isinstance(annotation, ast.BinOp):  # X | None
        annotation = annotation.left
    value = reader.evaluate(annotation, frame)
    return value if isinstance(value, Ref) and value.path is not None else None


def _plain_base(base: Any) -> bool:
    """A base whose constructor takes nothing: nn.Module, LightningModule, object, ABC, Generic."""
    if not isinstance(base, External):
        return True
    last = base.dotted.rsplit(".", 1)[-1]
    return last in ("Module", "LightningModule", "object", "ABC", "Generic", "Protocol") or base.dotted.startswith("builtins.")


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any(ast.unparse(d).split("(")[0].endswith("dataclass") for d in node.decorator_list)


def _dataclass_fields(reader: Any, module: ModuleReading, node: ast.ClassDef) -> tuple[Parameter, ...]:
    frame = _Frame(module, recording=False)
    fields = []
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            default = plan_value(reader.evaluate(statement.value, frame)) if statement.value is not None else REQUIRED
            if isinstance(statement.value, ast.Call) and ast.unparse(statement.value.func).endswith("field"):
                default = Unknown("field(...)")  # default_factory: not required, value left to the class
            fields.append(Parameter(statement.target.id, default, ast.unparse(statement.annotation)))
    return tuple(fields)


def takes_module(parameter: Parameter) -> bool:
    """A parameter that takes a module: annotated `nn.Module` (or a subclass), or named like one with no
    default but None."""
    annotation = (parameter.annotation or "").replace("Optional[", "").rstrip("]")
    if annotation.split(".")[-1] in ("Module", "LightningModule"):
        return True
    if parameter.annotation is not None and annotation not in ("", "None"):
        return False
    return parameter.name.lower() in MODULE_PARAMETERS and (parameter.required or parameter.default is None)


def _is_model_base(base: Any) -> bool:
    if not isinstance(base, External):
        return False
    dotted = base.dotted
    last = dotted.rsplit(".", 1)[-1]
    from_torch_nn = dotted.startswith("torch.nn.") and last[:1].isupper() and ".functional." not in dotted and ".init." not in dotted
    return from_torch_nn or last in _MODEL_BASES or last.endswith("PreTrainedModel")
