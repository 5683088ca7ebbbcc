"""The import rules of the layout by peer (README, "How it is built"), read
from the source so a violation fails here rather than in review."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mc"
NETWORK = ("grpc", "txredisapi", "aioquic", "qh3")
ENGINES = ("aioquic", "qh3")
#: The core: decisions and counts, no network library.
CORE = ("meetings.py", "assignment.py", "config.py", "errors.py", "interfaces.py",
        "backoff.py", "service.py", "validation.py", "periodic.py", "ownership.py")


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules(folder=""):
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "proto" not in p.parts)


def _uses(names, prefix):
    return sorted(n for n in names if n == prefix or n.startswith(prefix + "."))


@pytest.mark.parametrize("name", [c for c in CORE if (ROOT / c).exists()])
def test_the_core_imports_no_network_library(name):
    names = _imports(ROOT / name)
    for lib in NETWORK:
        assert not _uses(names, lib), f"mc/{name} imports {lib}"
    for peer in ("mc.gc", "mc.redis", "mc.participants", "mc.ops.web", "mc.testing"):
        assert not _uses(names, peer), f"mc/{name} imports {peer}"


def test_redis_knows_no_meeting_actors():
    for path in _modules("redis"):
        assert not _uses(_imports(path), "mc.meetings"), path


def test_participants_never_write_redis_themselves():
    for path in _modules("participants"):
        names = _imports(path)
        assert not _uses(names, "mc.redis") and not _uses(names, "txredisapi"), path


def test_the_liaison_does_not_import_the_grpc_server():
    assert not _uses(_imports(ROOT / "gc" / "liaison.py"), "mc.gc.grpcserver")


def test_only_tests_bench_and_the_demo_import_mc_testing():
    for path in _modules():
        if "testing" in path.relative_to(ROOT).parts:
            continue
        assert not _uses(_imports(path), "mc.testing"), path


def test_only_the_engine_seam_imports_the_quic_engine():
    for path in _modules():
        if path == ROOT / "participants" / "engine.py":
            continue
        names = _imports(path)
        for lib in ENGINES:
            assert not _uses(names, lib), f"{path} imports {lib}, not mc.participants.engine"


def test_every_package_is_in_the_distribution():
    """A package missing from setup.py's list imports from a checkout but not
    once installed (as mc.ac once did)."""
    setup = ast.parse((ROOT.parent / "setup.py").read_text("utf-8"))
    listed = {node.value for node in ast.walk(setup)
              if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    packages = {".".join(p.parent.relative_to(ROOT.parent).parts)
                for p in ROOT.rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)
