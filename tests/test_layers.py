"""The package's modules form no import circle (config is the bottom layer, sweeps/report the top)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("import_cycles", ROOT / "tools" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circle_among_the_package_modules():
    tool = load_tool()
    graph = tool.import_graph(ROOT / "src" / "ddbackdoor")
    assert tool.cycles(graph) == []
    # the configuration layer imports no algorithm module: the schema nothing of the package, the
    # layers that build and compare configs only each other and the bottom (errors, mappings)
    assert graph["ddbackdoor.config"] == set()
    bottom = {"ddbackdoor.errors", "ddbackdoor.mappings", "ddbackdoor.profiles", "ddbackdoor.config"}
    for module in ("ddbackdoor.profiles", "ddbackdoor.config_build", "ddbackdoor.identity"):
        assert graph[module] <= bottom, (module, graph[module] - bottom)


def test_the_checker_finds_a_planted_circle(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import x\n")
    (package / "b.py").write_text("def f():\n    from pkg import a\n")  # a lazy import still counts
    (package / "c.py").write_text("from . import a\n")
    tool = load_tool()
    assert tool.cycles(tool.import_graph(package)) == [["pkg.a", "pkg.b"]]
