"""The project's own discipline, not the paper's method: which file may import which, what stands at
the top level, and that the figures the modules' text derives are still what the code gives.

    python -m pytest -q tests/test_layout.py

A fork that adds a file (an `attention.py` for G, a second loss module) is told here which list to
edit: PAPER_MODULES for a module of the method (with the files of ours it may import), SCRIPTS for a
script a user runs. Each failure message names the list.
"""

import ast
import math

from tests.helpers import PROJECT

# The scripts a user runs: they sit on top and may import anything but each other in a cycle.
SCRIPTS = {"train", "sample", "metrics", "bench", "ablation"}
# The paper's modules and the only files of ours each may import. A fork that adds a module of the
# method (attention.py, say) adds it here, and adds it to the set of each module that imports it.
PAPER_MODULES = {"sle": set(), "diffaug": set(), "generator": {"sle"}, "discriminator": {"sle", "generator"},
                 "ema": set(), "losses": {"discriminator"},
                 "conditional": set()}   # conditional.py: BigGAN's method, not FastGAN's
LISTS = "tests/test_layout.py"   # where the lists above stand, for the failure messages
MACHINERY = "plumbing"   # the folder of what a trainer needs beyond the paper


def _is_test_file(name):
    return name.split(".")[0] == "tests" or name.startswith("test_") or name == "conftest"


def _imports_of(source):
    """Every absolute import in `source`, at module level or inside a function (ast.walk visits every
    node), as dotted names: `import a.b` gives a.b, `from a import b` gives a and a.b (b may be a
    module of package a), `from a.b import c` gives a.b and a.b.c."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _import_problems(files):
    """What breaks the layering in `files`, {dotted module name: source} (`train`, `plumbing.cli`), as a
    list of readable lines (empty: no problem). Test files (test_*.py, tests/*) are neither modules
    nor scripts: they may import anything, and nothing is checked in them."""
    modules = {name for name in files if not _is_test_file(name)}
    graph = {name: _imports_of(files[name]) & modules for name in modules}

    def reachable(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {name: reachable(name) for name in modules}
    cycles = {tuple(sorted(other for other in reach[name] if name in reach[other]))
              for name in modules if name in reach[name]}
    problems = [f"import cycle among {', '.join(cycle)}" for cycle in sorted(cycles)]
    machinery = {name for name in modules if name.startswith(MACHINERY + ".")}
    for name in sorted(modules - SCRIPTS):
        ours = graph[name]
        problems += [f"{name} imports the script {script}.py" for script in sorted(ours & SCRIPTS)]
        if name in PAPER_MODULES:
            allowed = PAPER_MODULES[name]
            rule = f"may import only {', '.join(sorted(allowed))}" if allowed else "may import nothing of ours"
            rule += f" (to allow more, add to PAPER_MODULES[{name!r}] in {LISTS})"
            what = "the paper's module"
        else:
            allowed = set(PAPER_MODULES) | machinery
            rule = (f"may import only the paper's modules and {MACHINERY}/ (a new module of the method goes "
                    f"in PAPER_MODULES in {LISTS}; a new script in SCRIPTS)")
            what = "machinery"
        problems += [f"{name} imports {other}, but {name} ({what}) {rule}"
                     for other in sorted(ours - allowed - SCRIPTS - {name})]
    return problems


def _project_files():
    """{dotted module name: source} of every .py file of the project: the top level and plumbing/."""
    root = PROJECT
    files = {p.stem: p.read_text() for p in root.glob("*.py")}
    files.update({f"{MACHINERY}.{p.stem}": p.read_text() for p in (root / MACHINERY).glob("*.py")})
    return files


def test_modules_import_in_layers():
    """The project's files import each other in layers, read from their source with `ast` (imports
    inside functions included):
    (a) no import cycle among our files;
    (b) no module imports a script (train.py, sample.py, metrics.py, bench.py, ablation.py): scripts
        sit on top and may import modules and other scripts;
    (c) the paper's modules build on each other only: sle.py and diffaug.py import nothing of ours,
        generator.py only sle, discriminator.py only sle and generator, ema.py nothing of ours;
    (d) the machinery (plumbing/: checkpoint, distributed, speed, monitor, datasets, ...) imports only
        the paper's modules and itself."""
    files = _project_files()
    named = SCRIPTS | set(PAPER_MODULES) | {f"{MACHINERY}.cli", f"{MACHINERY}.images"}
    assert named <= set(files), f"a file named by the rules is missing: {sorted(named - set(files))}"
    assert _import_problems(files) == []


def test_the_top_level_is_the_paper_and_the_scripts():
    """The file list is the map: at the top level only the paper's modules, BigGAN's extension, the
    scripts and test_fastgan.py (at most 14 .py files); the machinery one folder away."""
    top = {p.stem for p in PROJECT.glob("*.py")}
    unknown = sorted(top - SCRIPTS - set(PAPER_MODULES) - {"test_fastgan", "conftest"})
    assert not unknown, (f"{', '.join(f + '.py' for f in unknown)} at the top level: add a module of the method to "
                         f"PAPER_MODULES, a script to SCRIPTS (both in {LISTS}), or move machinery to {MACHINERY}/")
    assert len(top) <= 14, f"{len(top)} .py files at the top level (at most 14): {sorted(top)}"


def test_import_problems_are_reported():
    """_import_problems reports each kind of problem, including imports inside a function: a cycle
    between two scripts, a machinery module importing a script, a paper module importing machinery,
    and a machinery module importing a script through `from plumbing import` of a script name."""
    files = {
        "sle": "import torch\n",
        "generator": "from sle import SLE\n",
        "diffaug": "import torch\nfrom plumbing.images import to_uint8\n",
        "plumbing.cli": "import argparse\n",
        "plumbing.images": "from plumbing.cli import UsageError\n",
        "plumbing.monitor": "from plumbing import images\n\n\ndef stop():\n    from train import main\n",
        "plumbing.speed": "import generator\nfrom plumbing import monitor\n",
        "train": "import metrics\nimport generator\n",
        "metrics": "from plumbing import images\n\n\ndef score():\n    import train\n",
        "tests.test_train": "import train\nfrom plumbing import monitor\n",
        "test_fastgan": "import train\n",
    }
    assert _import_problems(files) == [
        "import cycle among metrics, train",
        "diffaug imports plumbing.images, but diffaug (the paper's module) may import nothing of ours "
        "(to allow more, add to PAPER_MODULES['diffaug'] in tests/test_layout.py)",
        "plumbing.monitor imports the script train.py",
    ]
    clean = {name: source for name, source in files.items() if name not in ("diffaug", "plumbing.monitor", "metrics")}
    assert _import_problems(clean) == []


def test_the_ema_text_gives_the_iteration_the_code_reaches_the_long_run_decay():
    """ema.py's text says from which iteration the long-run decay 0.999 is in effect; the figure is
    derived from ema_decay, so a change of RAMPUP or of the rule must change the text too."""
    import ema
    t_full = next(t for t in range(1, 100_000) if ema.ema_decay(t, 0.999) >= 0.999 - 1e-12)
    assert t_full == math.ceil(math.log(0.5) / math.log(0.999) / ema.RAMPUP)
    text = " ".join(ema.__doc__.split())
    assert f"from iteration {t_full:,} at 0.999, i.e. after {t_full - 1:,} iterations" in text, (
        f"ema.py's text should say 'from iteration {t_full:,} at 0.999'")
