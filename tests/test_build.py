"""Builds you can repeat: constraints.txt pins every dependency at a version
setup.py allows, the libraries whose private parts the code reads are pinned
to one minor, the Dockerfile is the multi-stage image the StatefulSet runs,
and the image's install steps (scripts/install.sh), run into a fresh
directory, give a daemon that registers, a drain helper and the tac file."""

import re
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from mc.testing.daemon import McProcess, wait_for
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
DOCKERFILE = ROOT / "Dockerfile"
STATEFULSET = ROOT / "deploy" / "kubernetes" / "statefulset.yaml"
IMAGE_PREFIX = "/opt/mc/venv"
#: The libraries whose private parts the code reads: one minor release each.
PRIVATE_PARTS_READ = ("txredisapi", "aioquic")
EXTRAS = ("", "test")


def pins():
    """``{canonical name: Version}`` from constraints.txt, each ``name==version``."""
    pinned = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and re.fullmatch(r"[A-Za-z0-9._-]+", name), line
            pinned[canonicalize_name(name)] = Version(version)
    return pinned


def requirements(distribution, extras=("",)):
    """The requirements of ``distribution`` that apply with ``extras``."""
    found = []
    for text in metadata.requires(distribution) or ():
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in extras):
            found.append(req)
    return found


def closure():
    """Every requirement of mc (with its test extra) and of what it pulls in."""
    seen, todo = {}, list(requirements("mc", EXTRAS))
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        seen.setdefault(name, []).append(req)
        if len(seen[name]) == 1:
            todo.extend(requirements(req.name, ("", *sorted(req.extras))))
    return seen


def test_constraints_pin_every_dependency_at_an_allowed_version_the_venv_holds():
    pinned = pins()
    for name, reqs in closure().items():
        assert name in pinned, f"{name} is installed but not pinned"
        for req in reqs:
            assert pinned[name] in req.specifier, f"{name} {pinned[name]} breaks {req}"
    for name, version in pinned.items():
        assert Version(metadata.version(name)) == version, \
            f"{name} {metadata.version(name)} installed, {version} pinned: run make venv"


def test_libraries_read_in_private_are_pinned_to_one_minor():
    required = {canonicalize_name(r.name): r.specifier for r in requirements("mc")}
    for name in PRIVATE_PARTS_READ:
        spec, version = required[name], pins()[name]
        major, minor = version.release[:2]
        assert version in spec
        for outside in (f"{major}.{minor + 1}.0", f"{major + 1}.0.0"):
            assert Version(outside) not in spec, f"{name}: {spec} lets {outside} in"
        if minor:
            assert Version(f"{major}.{minor - 1}.99") not in spec, f"{name}: {spec}"


def test_make_ci_the_demo_and_the_image_install_with_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c constraints.txt -e '.[test]'" in makefile
    assert re.search(r"^\$\(VENV\)/\.installed: setup\.py constraints\.txt$", makefile, re.M)
    assert re.search(r"^demo: venv", makefile, re.M), "the demo runs from that virtualenv"
    assert '-c "$src/constraints.txt"' in (ROOT / "scripts" / "install.sh").read_text()


# --- the image -----------------------------------------------------------------


def stages():
    """``[(base, [(instruction, arguments)])]`` of the Dockerfile, ARGs expanded."""
    args, found = {}, []
    for line in re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
        if instruction == "ARG" and not found:
            name, _, value = rest.partition("=")
            args[name] = value
        elif instruction == "FROM":
            found.append((rest.split()[0], []))
        else:
            found[-1][1].append((instruction, rest))
    return found


def test_the_dockerfile_is_the_image_the_statefulset_runs():
    (install_base, install), (base, final) = stages()
    assert install_base == base and re.fullmatch(r"python:3\.\d+-slim(-\w+)?", base)
    assert ("RUN", f"PYTHON=/usr/local/bin/python3 scripts/install.sh {IMAGE_PREFIX}") in install
    final_runs = " ".join(rest for instruction, rest in final if instruction == "RUN")
    assert "apt-get" not in final_runs and "pip" not in final_runs, "no compiler, no build"
    assert ("COPY", f"--from=install {IMAGE_PREFIX} {IMAGE_PREFIX}") in final
    (user,) = [rest for instruction, rest in final if instruction == "USER"]
    pod = yaml.safe_load(STATEFULSET.read_text())["spec"]["template"]["spec"]
    assert user == f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    assert int(user.split(":")[0]) != 0
    (entrypoint,) = [rest for instruction, rest in final if instruction == "ENTRYPOINT"]
    (container,) = pod["containers"]
    assert yaml.safe_load(entrypoint) == container["command"]
    assert container["command"][0] == f"{IMAGE_PREFIX}/bin/twistd"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == \
        f"{IMAGE_PREFIX}/bin/mc-drain"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests"} <= set(ignored)


class InstalledMc(McProcess):
    """The daemon run from an install of scripts/install.sh, by full paths."""

    def __init__(self, venv, *args, tac=False, **kw):
        self.venv, self.tac = venv, tac
        super().__init__(*args, **kw)

    def command(self):
        what = ["-y", str(self.venv / "share" / "mc" / "mc.tac")] if self.tac else ["mc"]
        return [str(self.venv / "bin" / "twistd"), "--nodaemon", "--pidfile", self.pidfile,
                "--logfile", self.logfile, *what]

    def _settled(self):
        return self.ready() or self.proc.poll() is not None


def test_the_install_script_into_a_fresh_directory_runs_the_daemon(
        installed, tmp_path, redis, fake_gc):
    for path in ("bin/twistd", "bin/mc-drain", "share/mc/mc.tac"):
        assert (installed / path).is_file(), path
    frozen = subprocess.run([str(installed / "bin" / "python"), "-m", "pip", "freeze"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    pinned = pins()
    for line in frozen:
        if not line.startswith("mc @"):
            name, _, version = line.partition("==")
            assert pinned[canonicalize_name(name)] == Version(version), line

    for tac in (False, True):
        workdir = tmp_path / f"tac-{tac}"
        workdir.mkdir()
        mc = InstalledMc(installed, workdir, fake_gc.url, redis.url, E2E_SERVICE_TOKEN,
                         E2E_GC_TOKEN, mc_id=f"mc-installed-{tac:d}", jwks_url=fake_gc.jwks_url,
                         env={"MC_SHUTDOWN_GRACE_SECONDS": "1"})
        try:
            mc.start()
            wait_for(lambda mc=mc: mc.ready() or not mc.alive(), 30,
                     what="the installed MC registered and ready")
            assert mc.alive(), mc.output()[-3000:] + mc.log()[-3000:]
            _, text = mc.http("/metrics")
            assert re.search(r'mc_build_info\{python="[\d.]+",quic_engine="aioquic-'
                             + re.escape(metadata.version("aioquic"))
                             + r'",version="0\.1\.0"\} 1\.0', text), text
            if not tac:
                drain = [str(installed / "bin" / "mc-drain"), "--pid", str(mc.pid),
                         "--wait", "10", "--url", f"http://127.0.0.1:{mc.http_port}/metrics"]
                r = subprocess.run(drain, capture_output=True, text=True, timeout=30)
                assert r.returncode == 0, shlex.join(drain) + "\n" + r.stdout + r.stderr
        finally:
            mc.stop()
        assert mc.proc.returncode == 0, mc.log()[-2000:]


def test_the_pins_of_setup_py_allow_a_pinned_range_only_where_said():
    """Every other requirement stays a range: the constraints file, not
    setup.py, fixes what is tested."""
    for req in requirements("mc"):
        if canonicalize_name(req.name) not in PRIVATE_PARTS_READ:
            assert not any(s.operator == "==" for s in SpecifierSet(str(req.specifier))), req


def test_every_folder_of_python_modules_is_a_package_the_install_carries():
    """A folder without __init__.py imports from a checkout (a namespace
    package) but find_packages leaves it out of an install."""
    folders = {p.parent for p in (ROOT / "mc").rglob("*.py") if "__pycache__" not in p.parts}
    for folder in folders:
        assert (folder / "__init__.py").is_file(), folder.relative_to(ROOT)
