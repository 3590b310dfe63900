"""The package's layers: each module imports only from its own layer or those below it, `import alvts` does not
import the demo workbench, torch or transformers, and the command lines parse their arguments without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "alvts"
# Bottom to top. A module belongs to the first entry its dotted name starts with.
LAYERS = [
    ("alvts._version", "alvts._lazy", "alvts.options", "alvts.compat", "alvts.offload", "alvts.kernels"),
    ("alvts.routing",),
    ("alvts.policies",),
    ("alvts.packs",),
    ("alvts.api",),
    ("alvts.calibration",),
    ("alvts.evaluation", "alvts.testing"),  # testing: tiny models and processors of every family, for tests
    ("alvts.integrations",),
    ("alvts.demo",),
    ("alvts.cli", "alvts.__main__"),
]


def _layer(module: str) -> int:
    if module == "alvts":
        return len(LAYERS)  # the package's own __init__: lazy re-exports of every layer
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, parts[-1] == "__init__"


def _imports(name: str, path: Path, is_package: bool):
    """Every alvts module a file imports (absolute, or relative resolved against its package)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.split(".")[0] == "alvts")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "alvts":
                continue
            for alias in node.names:  # `from . import demo` imports the submodule alvts.demo
                sub = f"{target}.{alias.name}"
                yield sub if (PACKAGE.parent / Path(*sub.split("."))).exists() else target


def test_every_module_imports_only_from_its_layer_or_below():
    upward = []
    for name, path, is_package in _modules():
        rank = _layer(name)
        for target in _imports(name, path, is_package):
            if target != "alvts" and _layer(target) > rank:
                upward.append(f"{name} imports {target}")
    assert not upward, upward


def test_the_layer_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "alvts" / "routing"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text("from ..demo import DEMO_MODEL_PATH\nfrom ..cli.common import CommandError\n")
    targets = list(_imports("alvts.routing.leak", fake / "leak.py", False))
    assert targets == ["alvts.demo", "alvts.cli.common"]
    assert all(_layer(t) > _layer("alvts.routing.leak") for t in targets)


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import alvts", ("alvts.demo", "torch", "transformers")),
        ("import alvts.cli.evaluate as e; e.parse_args(['--model', 'demo', '--methods', 'fastv:k=1'])", ("torch",)),
        ("import alvts.cli.calibrate as c; c.parse_args(['--model', 'demo', '--rank', '4'])", ("torch",)),
    ],
)
def test_importing_and_parsing_arguments_load_no_heavy_module(code, absent):
    check = f"import sys\n{code}\nprint([m for m in {list(absent)!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
