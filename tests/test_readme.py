"""The README is a front door and the docs are the repository's own: the README stays short, every
file, folder and link it names exists, every `circuitry` command it shows is a real command with
real options, every link in docs/ resolves (anchors included), and nothing points outside the
repository to the founding design."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 250
# what the commands the README shows make (never part of a clone): not checked
GENERATED = {"runs", "sweeps", "mlruns", "out", "build"}
# entries at the repository's top level that the README may name as paths
TOP = {p.name for p in ROOT.iterdir()
       if not p.name.startswith(".") and p.name not in GENERATED and not p.name.endswith(".egg-info")}
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)


def _repo_path(token: str) -> str | None:
    """`token` as a repository path when it names one (its first part is a top-level entry)."""
    token = token.strip().rstrip(".,;:")
    if any(c in token for c in " (*$<"):  # prose, calls, globs, shell variables, placeholders
        return None
    first = token.split("/", 1)[0]
    if first in TOP and (first != token or "." in first or token.endswith("/")):
        return token
    return None


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; keep it a front door (<= {MAX_README_LINES}), " \
                                  "and move reference material to docs/"


def _named_paths(text: str) -> set[str]:
    """The repository paths a page names: in backticks, in code blocks, as links from the root."""
    named = {p for t in CODE.findall(text) if (p := _repo_path(t))}
    for block in FENCE.findall(text):
        named |= {p for t in block.split() if (p := _repo_path(t))}
    return named


def test_every_path_the_readme_names_exists():
    text = README.read_text()
    named = _named_paths(text) | {t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+://", t)}
    assert "examples/quickstart.toml" in named and "docs/design.md" in named  # the check sees paths
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"README.md names paths that do not exist: {missing}"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_path_a_doc_names_exists(page: Path):
    """Paths written from the repository root (`workers/graph.py`, `deploy/README.md`) in docs/."""
    missing = sorted(p for p in _named_paths(page.read_text()) if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_layout_rows_name_real_modules():
    """In the layout table, a row for `folder/` names modules of that folder: each `x.py` (or
    `pkg/x.py`) must be a file there and each `x/` a package there."""
    rows = [line for line in README.read_text().splitlines() if re.match(r"\| `\w+/` \|", line)]
    assert {r.split("`")[1] for r in rows} >= {"tasks/", "workers/", "orchestrator/"}
    missing = []
    for row in rows:
        folder = ROOT / row.split("`")[1]
        for name in CODE.findall(row.split("|", 2)[2]):
            if (re.fullmatch(r"[\w/]+\.py", name) and not (folder / name).is_file()) or (
                    re.fullmatch(r"\w+/", name) and not (folder / name).is_dir()):
                missing.append(f"{folder.name}/{name}")
    assert not missing, f"README.md's layout table names modules that do not exist: {missing}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but '-' and '_' dropped, spaces -> '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page: Path):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)}: broken links {broken}"


def _commands(text: str) -> list[list[str]]:
    """Every `circuitry ...` command line in the README's code blocks, split into words."""
    out = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("circuitry "):
                out.append(line.split())
    return out


HELP_ALL = """
import sys
from circuitry.orchestrator.cli import main
for name in sys.argv[1:]:
    print("=== " + name, flush=True)
    try:
        main([name, "--help"])
    except SystemExit:
        pass
"""


def test_readme_commands_are_real():
    """Each command the README shows names a real `circuitry` sub-command and only its real
    options (so a renamed option cannot leave the tour behind); read from each command's --help,
    through the same entry point as the `circuitry` script."""
    commands = _commands(README.read_text())
    assert len(commands) >= 5, "the README's tour shows train, discover, run, ui and report"
    names = sorted({words[1] for words in commands})
    out = subprocess.run([sys.executable, "-c", HELP_ALL, *names], capture_output=True, text=True,
                         timeout=300, cwd=ROOT).stdout
    helps = dict(zip(names, out.split("=== ")[1:]))
    wrong = []
    for words in commands:
        name, text = words[1], helps.get(words[1], "")
        if "Usage:" not in text:
            wrong.append(f"`circuitry {name}`: no such command")
            continue
        options = set(re.findall(r"--[a-z][a-z0-9-]*", text))
        wrong += [f"`circuitry {name} {w}`: no such option" for w in words[2:]
                  if w.startswith("--") and w.split("=", 1)[0] not in options]
    assert not wrong, "README.md: " + "; ".join(wrong)


def test_no_reference_to_the_founding_design_outside_the_repository():
    """The design lives in docs/; nothing may send a reader to a file a clone does not have."""
    needle = "shared" + "/design"
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True, timeout=60)
        files = listed.stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the venv's
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not {".git", ".venv"} & set(p.relative_to(ROOT).parts)]
    found = []
    for name in filter(None, files):
        path = ROOT / name
        if path.is_file() and needle.encode() in path.read_bytes():
            found.append(name)
    assert not found, f"{needle} is referenced in {found}; point to docs/design.md or docs/formats.md"


def test_sweeps_doc_lists_every_spec_field():
    """docs/sweeps.md is the spec reference: a section per table, a row per field (the models in
    orchestrator/spec.py are the truth; `circuitry schema` prints them)."""
    from circuitry.orchestrator import spec

    models = {"sweep": spec.Sweep, "train": spec.Train, "prune": spec.Prune, "discover": spec.Discover,
              "resources": spec.Resources, "testing": spec.Testing}
    assert set(models) == set(spec.TABLES), "a new spec table: add it here and to docs/sweeps.md"
    text = (ROOT / "docs" / "sweeps.md").read_text()
    sections = dict(re.findall(r"^## `\[(\w+)\]`[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    missing = []
    for table, model in models.items():
        if table not in sections:
            missing.append(f"[{table}]")
            continue
        rows = {name for line in sections[table].splitlines() if line.startswith("| `")
                for name in CODE.findall(line.split("|")[1])}
        missing += [f"{table}.{f}" for f in model.model_fields if f not in rows]
    assert not missing, f"docs/sweeps.md does not document {missing}"


def test_readme_python_api_names_exist():
    """Every `circuitry.NAME` the README shows is part of the public API (`import circuitry`)."""
    import circuitry

    packages = {"tasks", "workers", "orchestrator", "mlp", "transformer"}  # sub-packages, and the format names circuitry.mlp/1, circuitry.transformer/1
    names = set(re.findall(r"\bcircuitry\.(\w+)", README.read_text())) - packages
    assert {"train", "discover"} <= names
    missing = sorted(n for n in names if not hasattr(circuitry, n))
    assert not missing, f"README.md shows circuitry.{missing} which `import circuitry` does not have"
