"""How much of a repository `audit DIR` reaches with no arguments: of the nn.Module classes the repository
defines (counted here from its source, independently of the tool), how many are audited as a model, covered
inside an audited model (`capture.classes`), named as not audited, or unaccounted for.

    python benchmarks/reach.py REPO [REPO...]           # a markdown table on stdout
    python benchmarks/reach.py --timeout 900 REPO...

Each repository is audited in a fresh `audit REPO --format json` process run from inside it. The census counts
classes defined at any depth of a file (`.py` and notebooks' code cells) whose bases lead, through the
repository's own classes, to a base named `Module` (`nn.Module`, `LightningModule`...) or `Sequential`/
`ModuleList`/`ModuleDict`. Fetch the repositories yourself; none is part of this project.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from pathlib import Path

BASES = {"Module", "LightningModule", "PreTrainedModel", "ModelMixin", "Sequential", "ModuleList", "ModuleDict"}


def census(root: Path) -> set[tuple[str, str]]:
    """(file relative to root, class name) of every nn.Module class the repository defines."""
    classes: list[tuple[str, str, list[str]]] = []
    for path, text in _sources(root):
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.append((str(path.relative_to(root)), node.name, [_base_name(b) for b in node.bases]))
    found: set[tuple[str, str]] = set()
    names: set[str] = set()
    changed = True
    while changed:
        changed = False
        for file, name, bases in classes:
            if (file, name) not in found and any(_is_module_base(b, names) for b in bases):
                found.add((file, name))
                names.add(name)
                changed = True
    return found


def _sources(root: Path):
    for path in sorted(root.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if path.suffix == ".py":
            yield path, path.read_text(encoding="utf-8", errors="replace")
        elif path.suffix == ".ipynb":
            try:
                cells = json.loads(path.read_text(encoding="utf-8", errors="replace")).get("cells", [])
            except ValueError:
                continue
            for cell in cells:
                if cell.get("cell_type") == "code":
                    source = cell.get("source", "")
                    source = "".join(source) if isinstance(source, list) else source
                    yield path, "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _base_name(node: ast.expr) -> str:
    """The base as written, dotted (`nn.Module`, `torch.distributions.Categorical`)."""
    while isinstance(node, ast.Subscript):
        node = node.value
    return ast.unparse(node) if isinstance(node, (ast.Attribute, ast.Name)) else ""


def _is_module_base(base: str, names: set[str]) -> bool:
    """A module base class, or one of the repository's module classes (by name; a torch class of the same name,
    `torch.distributions.Categorical` beside the user's `Categorical` module, is not one)."""
    last = base.rsplit(".", 1)[-1]
    if last in BASES or (last.endswith("Module") and last[:1].isupper()):
        return True
    return last in names and not base.startswith(("torch.", "nn.", "F."))


def measure(root: Path, timeout: float) -> dict[str, object]:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "auditor", ".", "--format", "json"], cwd=root, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    document = json.loads(done.stdout)
    defined = census(root)
    ok = [r for r in document["results"] if r["status"] == "ok" and r.get("capture")]
    covered = {_key(c) for r in ok for c in r["capture"].get("classes", [])}
    named = {_key(r["class"]) for r in document["results"] if r["status"] in ("skipped", "error") and r.get("class")}
    named |= {_member(r["target"]) for r in document["results"] if r["status"] in ("skipped", "error") and ":" in Path(r["target"]).name}
    reached = {k for k in defined if k in covered}
    not_audited = {k for k in defined - reached if k in named}
    return {"repository": root.name, "defined": len(defined), "audited or covered": len(reached), "not audited": len(not_audited),
            "unaccounted": len(defined - reached - not_audited), "summary": document["summary"].get("classes"), "seconds": round(seconds)}


def _key(record: dict[str, object]) -> tuple[str, str]:
    return str(record["file"]).split(":cell ", 1)[0], str(record["name"])


def _member(target: str) -> tuple[str, str]:
    file, _, name = target.rpartition(":")
    return file, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repos", nargs="+", type=Path)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    rows = [measure(repo.resolve(), args.timeout) for repo in args.repos]
    print("| repository | classes | audited or covered | not audited | unaccounted | seconds |\n| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['repository']} | {row['defined']} | {row['audited or covered']} | {row['not audited']} | {row['unaccounted']} | {row['seconds']} |")
    total = sum(int(r["defined"]) for r in rows)  # type: ignore[arg-type]
    reached = sum(int(r["audited or covered"]) for r in rows)  # type: ignore[arg-type]
    print(f"\n{reached} of {total} classes audited or covered ({100 * reached / max(total, 1):.0f} %)")


if __name__ == "__main__":
    main()
