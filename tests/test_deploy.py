"""deploy/ against the daemon it deploys: each file checked by its platform's
own validator where there is one offline, cross-checked against mc/config.py
and the metrics registry, and run the way its platform runs it (command line,
environment, secret files, probes, reload, drain, stop) against redis-server
and the fake GC. A file in deploy/ that no test here reads fails the suite."""

import base64
import inspect
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogLevel

from mc import config as mcconfig
from mc.gc.grpcserver import GrpcServerService
from mc.ops import drain, logs
from mc.ops.health import PRESSURE_PERCENT
from mc.ops.metrics import Metrics
from mc.participants.webtransport import UDP_RECEIVE_BUFFER
from mc.testing.daemon import TWISTD, McProcess, wait_for
from mc.testing.fakegc import assign_meeting
from tests.configs import make_config
from tests.conftest import E2E_GC_TOKEN, E2E_SERVICE_TOKEN
from tests.helpers import accepted_with

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "mc@.service"
SYSCTL = DEPLOY / "systemd" / "99-mc-udp.conf"
ENV_EXAMPLE = DEPLOY / "systemd" / "mc.env.example"
KUBERNETES = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
DASHBOARD = DEPLOY / "grafana" / "mc.json"
TAC = ROOT / "tac" / "mc.tac"
#: Alerting rules, their promtool tests and the PrometheusRule: tests/test_alerts.py.
PROMETHEUS = sorted((DEPLOY / "prometheus").glob("*.yaml"))
CHECKED = {UNIT, ENV_EXAMPLE, SYSCTL, DASHBOARD, *KUBERNETES, *PROMETHEUS}

#: Where the unit and the image (Dockerfile) have the virtualenv; the tests use their own.
UNIT_PREFIX = IMAGE_PREFIX = "/opt/mc/venv/"
VENV_TWISTD = str(Path(sys.prefix) / "bin" / "twistd")
#: Where the unit reads the secret files: paths the operator updates in place.
OPERATOR_PATHS = ("/etc/mc/secrets/", "/etc/mc/tls/")

SECRET_VALUES = {mcconfig.SERVICE_TOKEN[0], mcconfig.GC_TOKENS[0], mcconfig.BINDING_SECRET[0]}
SECRET_FILES = {mcconfig.SERVICE_TOKEN[1], mcconfig.GC_TOKENS[1], mcconfig.BINDING_SECRET[1],
                "MC_TLS_KEY_PATH"}
KNOWN_ENV = ({s.env for s in mcconfig.SETTINGS} | SECRET_VALUES | SECRET_FILES
             | {mcconfig.INSECURE_NO_AUTH_ENV})
#: (container port name, the setting that binds it, protocol)
PORTS = (("grpc", "MC_GRPC_BIND_ADDRESS", "TCP"),
         ("webtransport", "MC_WEBTRANSPORT_BIND_ADDRESS", "UDP"),
         ("http", "MC_HEALTH_BIND_ADDRESS", "TCP"))
#: What a test changes in a deploy file's environment: where the peers are,
#: and free loopback ports. Everything else runs as shipped.
ENDPOINTS = ("GC_GRPC_URL", "REDIS_URL", "AC_JWKS_URL", "MC_GRPC_BIND_ADDRESS",
             "MC_GRPC_ADVERTISE_URL", "MC_WEBTRANSPORT_BIND_ADDRESS",
             "MC_WEBTRANSPORT_ADVERTISE_URL", "MC_HEALTH_BIND_ADDRESS")
GRPC_STOP_GRACE = inspect.signature(GrpcServerService).parameters["grace"].default
MH = [("mh-1", "https://mh-1.example:4433", "")]


def test_every_file_in_deploy_is_checked_and_named_in_the_readme():
    shipped = {p for p in DEPLOY.rglob("*") if p.is_file()}
    assert shipped == CHECKED, "a file in deploy/ that no test checks"
    readme = (ROOT / "README.md").read_text()
    for path in {p.parent if p in KUBERNETES else p for p in CHECKED}:
        assert str(path.relative_to(ROOT)) in readme, path


# --- the pieces every check uses ---------------------------------------------


def setting_default(env):
    return next(s.default for s in mcconfig.SETTINGS if s.env == env)


def port_of(env, name):
    return mcconfig.parse_address(name, env.get(name) or setting_default(name)).port


def shutdown_grace(env):
    return float(env.get("MC_SHUTDOWN_GRACE_SECONDS") or setting_default(
        "MC_SHUTDOWN_GRACE_SECONDS"))


def rooted(env, root):
    """``env`` with its absolute file paths moved under ``root``, where the
    test writes the files the deployment would provide."""
    return {k: str(root / v.lstrip("/")) if v.startswith(("/etc/", "/run/")) else v
            for k, v in env.items()}


def write_provided_files(env, cert):
    """The files an operator provides, at the paths ``env`` names: the
    secrets the tests know, and the test certificate and its key."""
    contents = {
        mcconfig.SERVICE_TOKEN[1]: E2E_SERVICE_TOKEN,
        mcconfig.GC_TOKENS[1]: E2E_GC_TOKEN,
        mcconfig.BINDING_SECRET[1]: base64.b64encode(os.urandom(32)).decode(),
        "MC_TLS_CERT_PATH": Path(cert.cert_path).read_text(),
        "MC_TLS_KEY_PATH": Path(cert.key_path).read_text(),
    }
    for name, content in contents.items():
        path = Path(env[name])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        path.chmod(0o400)


class DeployedMc(McProcess):
    """An MC started by a deploy file's own command line and environment, the
    test's endpoints (ENDPOINTS) laid over it. McProcess supplies the ports,
    the certificate, the waits and the stop; the log is stdout, as under
    systemd and Kubernetes."""

    def __init__(self, argv, deploy_env, workdir, fake_gc, redis):
        super().__init__(workdir, fake_gc.url, redis.url, E2E_SERVICE_TOKEN, E2E_GC_TOKEN,
                         mc_id=deploy_env["MC_ID"], jwks_url=fake_gc.jwks_url)
        self.argv = list(argv)
        self.env = {**deploy_env, **{k: self.env[k] for k in ENDPOINTS},
                    "PATH": self.env["PATH"]}

    def command(self):
        return list(self.argv)

    def log(self):
        return self.output()


@pytest.fixture
def launch():
    """``launch(mc)``: start it; every MC launched is stopped at teardown."""
    launched = []

    def start(mc):
        launched.append(mc)
        return mc.start()

    yield start
    for mc in launched:
        mc.stop()


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def assign_secret_named_meeting(mc):
    """A meeting whose id is the service token's value: the MC's shutdown
    warning names the meetings still hosted, so that line carries the secret
    unless the logger scrubs it."""
    assert assign_meeting(mc.grpc_target, E2E_SERVICE_TOKEN, MH, E2E_GC_TOKEN).accepted


def stop(mc, timeout):
    """SIGTERM, as systemd and the kubelet stop it; the seconds it took to exit 0."""
    started = time.monotonic()
    mc.signal(signal.SIGTERM)
    assert mc.wait(timeout) == 0
    return time.monotonic() - started


def assert_scrubbed(text):
    still_hosted = [line for line in text.splitlines() if "still hosted" in line]
    assert still_hosted and all("<redacted>" in line for line in still_hosted), text[-2000:]
    for secret in (E2E_SERVICE_TOKEN, E2E_GC_TOKEN):
        assert secret not in text


# --- systemd -----------------------------------------------------------------


def read_unit(path):
    """``[(section, key, value)]`` in file order (keys repeat in units)."""
    entries, section = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep and section and not value.endswith("\\"), line
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(key, section="Service"):
    return [v for s, k, v in read_unit(UNIT) if (s, k) == (section, key)]


def unit_value(key, section="Service"):
    (value,) = unit_values(key, section)
    return value


def expand_specifiers(value, instance):
    """The specifiers the unit uses, as systemd resolves them for ``instance``."""
    host = socket.gethostname()
    return re.sub(r"%(.)", lambda m: {"%": "%", "i": instance, "H": host,
                                      "l": host.split(".")[0]}[m.group(1)], value)


def read_env_file(path):
    """An EnvironmentFile= by systemd's rules: KEY=VALUE, comments, quotes."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key.strip()), line
        value = value.strip()
        if len(value) > 1 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def unit_environment(instance="1"):
    """What systemd hands instance ``instance``'s ExecStart= process:
    Environment=, then the EnvironmentFile= (which wins; the per-instance one
    is optional and absent)."""
    env = dict(expand_specifiers(v, instance).split("=", 1) for v in unit_values("Environment"))
    assert [expand_specifiers(v, instance) for v in unit_values("EnvironmentFile")] == [
        "/etc/mc/mc.env", f"-/etc/mc/mc-{instance}.env"]
    env.update(read_env_file(ENV_EXAMPLE))
    return env


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is not installed (make test installs Debian's systemd)")
    # The unit names the install's virtualenv, whose twistd verify checks is executable.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(UNIT_PREFIX, sys.prefix + "/"))
    # The template, and an instance of it as `systemctl enable mc@1` links it.
    (tmp_path / "mc@1.service").symlink_to(unit.name)
    for name in (unit.name, "mc@1.service"):
        r = subprocess.run([analyze, "verify", "--man=no", name], capture_output=True,
                           text=True, timeout=30, cwd=tmp_path)
        # verify exits 0 on unknown keys and bad specifiers; it only warns.
        assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_each_instance_has_its_own_id_and_ports_and_mc_env_sets_none():
    envs = [unit_environment(str(i)) for i in range(10)]
    for name in ("MC_ID", "MC_GRPC_BIND_ADDRESS", "MC_WEBTRANSPORT_BIND_ADDRESS",
                 "MC_WEBTRANSPORT_ADVERTISE_URL", "MC_HEALTH_BIND_ADDRESS"):
        assert name not in read_env_file(ENV_EXAMPLE), f"mc.env would override {name}"
        assert len({env[name] for env in envs}) == 10, name
    ports = [port_of(env, name) for env in envs for _, name, _ in PORTS]
    assert len(set(ports)) == len(ports) and all(1024 < p < 65536 for p in ports)
    for env in envs:
        assert mcconfig.ID_RE.fullmatch(env["MC_ID"])
        wt_port = port_of(env, "MC_WEBTRANSPORT_BIND_ADDRESS")
        assert env["MC_WEBTRANSPORT_ADVERTISE_URL"].endswith(f":{wt_port}/")


def test_systemd_unit_matches_the_daemon():
    assert shlex.split(unit_value("ExecStart")) == [
        UNIT_PREFIX + "bin/twistd", "--nodaemon", "--pidfile=", "mc"]
    assert unit_value("User") not in ("", "root") and unit_value("KillSignal") == "SIGTERM"
    assert unit_value("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert unit_value("Restart") == "on-failure"
    for key in ("NoNewPrivileges", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert unit_value(key) == "yes", key
    assert unit_value("ProtectSystem") == "strict"
    # The stop waits up to the shutdown grace for participants, after up to
    # GRPC_STOP_GRACE for gRPC calls: systemd must not SIGKILL it before that.
    env = unit_environment()
    assert float(unit_value("TimeoutStopSec")) > shutdown_grace(env) + GRPC_STOP_GRACE
    assert set(env) <= KNOWN_ENV, set(env) - KNOWN_ENV
    assert not SECRET_VALUES & set(env), "a secret's value in the environment"
    # Every secret and certificate file from a path the operator updates, never
    # a LoadCredential= copy made once at start (a rotation would go unseen).
    assert unit_values("LoadCredential") == [] and "%d" not in UNIT.read_text()
    rotatable = SECRET_FILES | {"MC_TLS_CERT_PATH"}
    assert rotatable <= set(env)
    assert all(env[k].startswith(OPERATOR_PATHS) for k in rotatable), env
    # The unit says which settings still need a restart.
    head = UNIT.read_text().split("[Unit]")[0]
    for restart in ("REDIS_URL", "MC_REDIS_CA_PATH", "MC_GC_CA_FILE"):
        assert restart in head, restart


ROTATED_GC_TOKEN = "deploy-rotated-gc-token-V5"


def test_systemd_exec_start_runs_reloads_and_stops_the_mc(tmp_path, redis, fake_gc, launch):
    root = tmp_path / "root"
    env = rooted(unit_environment(), root)
    argv = shlex.split(unit_value("ExecStart"))
    argv[0] = argv[0].replace(UNIT_PREFIX + "bin/twistd", VENV_TWISTD)
    mc = DeployedMc(argv, env, tmp_path, fake_gc, redis)
    write_provided_files(mc.env, mc.cert)
    launch(mc)
    wait_for(mc.ready, 20, what="/readyz 200")
    assert [r for r in fake_gc.registrations() if r.request.id == env["MC_ID"]]

    # `systemctl reload` (and logrotate's SIGUSR1) must not stop it: both
    # signals' default action is to kill.
    reload = shlex.split(unit_value("ExecReload").replace("$MAINPID", str(mc.pid)))
    subprocess.run(reload, check=True, timeout=5)
    mc.signal(signal.SIGUSR1)
    wait_for(mc.ready, 5, what="/readyz 200 after reload")
    assert mc.alive()

    # A rotation as an operator makes it (a new file renamed into place at the
    # path the unit names), no signal: the MC accepts the new GC token.
    tokens = Path(env[mcconfig.GC_TOKENS[1]])
    staged = tokens.with_name(".gc-tokens.new")
    staged.write_text(f"{E2E_GC_TOKEN}\n{ROTATED_GC_TOKEN}\n")
    staged.rename(tokens)
    wait_for(lambda: accepted_with(mc, ROTATED_GC_TOKEN, MH), 5, interval=0.2,
             what="the rotated GC token accepted without a signal")

    assign_secret_named_meeting(mc)
    assert stop(mc, float(unit_value("TimeoutStopSec"))) < float(unit_value("TimeoutStopSec"))
    out = mc.output()
    assert json_lines(out), "MC_LOG_FORMAT=json from the environment file"
    assert_scrubbed(out)


class InstanceMc(DeployedMc):
    """An instance of the template started as systemd would, but as a plain
    process: its own id and ports (bound on loopback), the test's peers."""

    def __init__(self, argv, deploy_env, workdir, fake_gc, redis):
        super().__init__(argv, deploy_env, workdir, fake_gc, redis)
        self.grpc_port, self.wt_port, self.http_port = (
            port_of(deploy_env, name) for _, name, _ in PORTS)
        for _, name, _ in PORTS:
            self.env[name] = f"127.0.0.1:{port_of(deploy_env, name)}"
        self.env["MC_WEBTRANSPORT_ADVERTISE_URL"] = deploy_env["MC_WEBTRANSPORT_ADVERTISE_URL"]
        del self.env["MC_GRPC_ADVERTISE_URL"]  # the MC's default: this host, its own port


def test_two_instances_of_the_template_run_side_by_side(tmp_path, redis, fake_gc, launch):
    root = tmp_path / "root"
    argv = shlex.split(unit_value("ExecStart"))
    argv[0] = argv[0].replace(UNIT_PREFIX + "bin/twistd", VENV_TWISTD)
    mcs = []
    for instance in ("1", "2"):
        mc = InstanceMc(argv, rooted(unit_environment(instance), root), tmp_path, fake_gc,
                        redis)
        write_provided_files(mc.env, mc.cert)
        mcs.append(launch(mc))
    for mc in mcs:
        wait_for(mc.ready, 20, what=f"{mc.mc_id}: /readyz 200 and registered")
    registered = {r.request.id: r.request for r in fake_gc.registrations()}
    ids = [mc.mc_id for mc in mcs]
    assert ids == [f"mc-{socket.gethostname().split('.')[0]}-{i}" for i in (1, 2)]
    for mc in mcs:
        request = registered[mc.mc_id]
        assert request.grpc_endpoint.endswith(f":{mc.grpc_port}")
        assert request.webtransport_endpoint == mc.env["MC_WEBTRANSPORT_ADVERTISE_URL"]
    first, second = (registered[i] for i in ids)
    assert first.grpc_endpoint != second.grpc_endpoint
    assert first.webtransport_endpoint != second.webtransport_endpoint
    for mc in mcs:
        assert stop(mc, float(unit_value("TimeoutStopSec"))) < float(unit_value("TimeoutStopSec"))


# --- Kubernetes --------------------------------------------------------------


def kubernetes_docs():
    return [doc for path in KUBERNETES for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind):
    return [d for d in kubernetes_docs() if d["kind"] == kind]


def statefulset():
    (sts,) = by_kind("StatefulSet")
    return sts


def mc_container():
    (container,) = statefulset()["spec"]["template"]["spec"]["containers"]
    return container


def kubernetes_env(container, fields, secrets):
    """The container's environment as the kubelet builds it: fieldRef and
    secretKeyRef values from ``fields`` and ``secrets``, ``$(VAR)`` expanded
    from the variables defined before it."""
    env = {}
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif "fieldRef" in var["valueFrom"]:
            env[var["name"]] = fields[var["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[(ref["name"], ref["key"])]
    return env


POD_FIELDS = {"metadata.name": "mc-0", "metadata.namespace": "mc-test"}
HELPERS = {"POD_NAME", "POD_NAMESPACE"}
#: The label the StatefulSet controller puts on each pod: its own name.
POD_SELECTOR = "statefulset.kubernetes.io/pod-name"


def static_env(redis_url="redis://:pw@redis.example.internal:6379/0"):
    return kubernetes_env(mc_container(), POD_FIELDS, {("mc-secrets", "redis-url"): redis_url})


def prestop_wait(container):
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    return float(command[command.index("--wait") + 1])


@pytest.mark.parametrize("version", sorted({
    kubernetes_validate.utils.latest_version(),
    min(kubernetes_validate.utils.all_versions(), key=lambda v: tuple(map(int, v.split("."))))}))
def test_kubernetes_manifests_validate_offline(version):
    docs = kubernetes_docs()
    assert {d["kind"] for d in docs} == {"StatefulSet", "Service", "PodDisruptionBudget",
                                         "DaemonSet"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_manifests_match_the_daemon():
    sts, container = statefulset(), mc_container()
    pod = sts["spec"]["template"]
    labels = pod["metadata"]["labels"]
    names = [v["name"] for v in container["env"]]
    assert len(names) == len(set(names))
    assert set(names) <= KNOWN_ENV | HELPERS, set(names) - KNOWN_ENV - HELPERS
    assert not SECRET_VALUES & set(names), "a secret's value in the environment"
    values = " ".join(v.get("value", "") for v in container["env"])
    assert all(f"$({h})" in values for h in HELPERS)
    env = static_env()
    # A stable id: the pod's own name, kept by the StatefulSet across restarts.
    assert next(v["value"] for v in container["env"] if v["name"] == "MC_ID") == "$(POD_NAME)"
    # REDIS_URL may carry a password: from the Secret, not written here.
    assert next(v for v in container["env"] if v["name"] == "REDIS_URL")["valueFrom"][
        "secretKeyRef"]["name"] == "mc-secrets"

    ports = {p["name"]: p for p in container["ports"]}
    assert set(ports) == {name for name, _, _ in PORTS}
    for name, setting, protocol in PORTS:
        assert ports[name]["containerPort"] == port_of(env, setting), name
        assert ports[name]["protocol"] == protocol, name
    for advertise, port in (("MC_GRPC_ADVERTISE_URL", "grpc"),
                            ("MC_WEBTRANSPORT_ADVERTISE_URL", "webtransport")):
        assert urlsplit(env[advertise]).port == ports[port]["containerPort"], advertise
    governing = sts["spec"]["serviceName"]
    assert env["MC_GRPC_ADVERTISE_URL"].startswith(f"http://mc-0.{governing}.mc-test.svc.")

    all_services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    per_pod = {name: s for name, s in all_services.items()
               if POD_SELECTOR in s["spec"]["selector"]}
    services = {name: s for name, s in all_services.items() if name not in per_pod}
    assert services[governing]["spec"]["clusterIP"] == "None"
    protocols = set()
    for service in all_services.values():
        spec = service["spec"]
        # Readiness rolls the StatefulSet on; the GC, the participants being
        # moved and Prometheus must still reach a draining MC.
        assert spec["publishNotReadyAddresses"] is True
        (port,) = spec["ports"]
        target = ports[port["targetPort"]]
        assert (port["port"], port["protocol"]) == (target["containerPort"], target["protocol"])
        protocols.add(port["protocol"])
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    assert protocols == {"TCP", "UDP"} and len(services) == len(PORTS)

    # Participants reach each pod from outside through a balancer of its own,
    # at the name its MC advertises: one per replica.
    replicas = sts["spec"]["replicas"]
    assert len(per_pod) == replicas
    for n in range(replicas):
        pod_env = kubernetes_env(container, {**POD_FIELDS, "metadata.name": f"mc-{n}"},
                                 {("mc-secrets", "redis-url"): "redis://r:6379/0"})
        advertised = urlsplit(pod_env["MC_WEBTRANSPORT_ADVERTISE_URL"])
        service = per_pod[f"mc-{n}-webtransport"]
        assert service["spec"]["selector"] == {POD_SELECTOR: f"mc-{n}"}
        assert service["spec"]["type"] == "LoadBalancer"
        assert service["spec"]["externalTrafficPolicy"] == "Local", "the clients' addresses"
        assert service["metadata"]["annotations"][
            "external-dns.alpha.kubernetes.io/hostname"] == advertised.hostname
        assert service["spec"]["ports"][0]["port"] == advertised.port
        assert service["spec"]["ports"][0]["protocol"] == "UDP"
    scrape = next(s["metadata"]["annotations"] for s in services.values()
                  if "prometheus.io/scrape" in s["metadata"].get("annotations", {}))
    assert int(scrape["prometheus.io/port"]) == ports["http"]["containerPort"]
    assert scrape["prometheus.io/path"] == "/metrics"

    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert container[probe]["httpGet"] == {"path": path, "port": "http"}, probe
    # preStop's wait, then SIGTERM's: the gRPC grace and the shutdown grace.
    assert pod["spec"]["terminationGracePeriodSeconds"] > (
        prestop_wait(container) + GRPC_STOP_GRACE + shutdown_grace(env))

    # Secrets and certificates: files from Secret volumes, mounted read-only.
    volumes = {v["name"]: v["secret"] for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for name in SECRET_FILES | {"MC_TLS_CERT_PATH"}:
        path = Path(env[name])
        mount = mounts[str(path.parent)]
        secret = volumes[mount["name"]]
        assert mount["readOnly"] is True and secret["secretName"]
        if "items" in secret:
            assert path.name in {i["path"] for i in secret["items"]}, name
        else:
            assert path.name in ("tls.crt", "tls.key"), name

    # Health is DEGRADED at PRESSURE_PERCENT of the cgroup limits: they must
    # be set, and be the budget the MC really gets.
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]
    assert set(resources["limits"]) == {"cpu", "memory"}
    cpu = resources["limits"]["cpu"]
    assert str(cpu) == "1", "one MC is one reactor on one core"

    (pdb,) = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


def memory_bytes(quantity):
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi)?", quantity)
    return int(m.group(1)) * units.get(m.group(2), 1)


def test_kubernetes_container_runs_answers_probes_drains_and_stops(tmp_path, redis, fake_gc,
                                                                    launch):
    container = mc_container()
    pod_spec = statefulset()["spec"]["template"]["spec"]
    env = rooted(static_env(redis.url), tmp_path / "root")
    argv = [*container["command"], *container.get("args", [])]
    assert argv[0] == IMAGE_PREFIX + "bin/twistd", "the image's entry point by its full path"
    mc = DeployedMc([VENV_TWISTD, *argv[1:]], env, tmp_path, fake_gc, redis)
    write_provided_files(env, mc.cert)
    # The shipped values pass the MC's own rules, before any test endpoint.
    mcconfig.load({}, env)

    launch(mc)
    wait_for(mc.ready, 20, what="/readyz 200")
    for probe in ("livenessProbe", "readinessProbe"):
        status, _ = mc.http(container[probe]["httpGet"]["path"])
        assert status == 200, probe
    status, metrics = mc.http("/metrics")
    assert status == 200 and "mc_participants_current 0.0" in metrics
    # Idle, under a quarter of where health turns DEGRADED: room for meetings.
    limit = memory_bytes(container["resources"]["limits"]["memory"])
    assert psutil.Process(mc.pid).memory_info().rss < limit * PRESSURE_PERCENT / 100 / 4

    # The kubelet runs the preStop hook, then sends SIGTERM.
    prestop = list(container["lifecycle"]["preStop"]["exec"]["command"])
    assert prestop[0] == IMAGE_PREFIX + "bin/mc-drain", "no python needed on the PATH"
    prestop[0] = str(Path(sys.prefix) / "bin" / "mc-drain")
    prestop[prestop.index("--pid") + 1] = str(mc.pid)
    assign_secret_named_meeting(mc)
    for _ in range(2):  # a second run must not undrain it: SIGUSR2 toggles
        r = subprocess.run(prestop, env=mc.env, capture_output=True, text=True,
                           timeout=prestop_wait(container) + 10)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(mc.http("/readyz")[1]) == {
            "ready": False, "reason": "draining", "gc": "registered"}
    assert mc.metric("mc_draining") == 1.0
    left = pod_spec["terminationGracePeriodSeconds"] - prestop_wait(container)
    assert stop(mc, left) < left
    out = mc.output()
    assert json_lines(out), "MC_LOG_FORMAT=json from the manifest"
    assert_scrubbed(out)


# --- the tac file --------------------------------------------------------------


class TacMc(McProcess):
    """``twistd -ny tac/mc.tac``; started once it answers /readyz, since the
    line McProcess waits for is info, which a warn level drops."""

    def _settled(self):
        return self.ready() or self.proc.poll() is not None

    def command(self):
        return [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile", self.pidfile,
                "--logfile", self.logfile, "-y", str(TAC)]


def test_tac_logs_like_the_plugin(tmp_path, redis, fake_gc, launch):
    mc = TacMc(tmp_path, fake_gc.url, redis.url, E2E_SERVICE_TOKEN, E2E_GC_TOKEN, mc_id="mc-tac",
               jwks_url=fake_gc.jwks_url,
               env={"MC_LOG_FORMAT": "json", "MC_LOG_LEVEL": "warn",
                    "MC_SHUTDOWN_GRACE_SECONDS": "1"})
    launch(mc)
    wait_for(mc.ready, 20, what="/readyz 200")
    assign_secret_named_meeting(mc)
    stop(mc, 20)
    log = mc.log()
    lines = json_lines(log)
    assert lines and {e["level"] for e in lines} <= {"warn", "error", "critical"}
    assert_scrubbed(log)
    assert E2E_SERVICE_TOKEN not in mc.output()


@pytest.fixture
def log_state(monkeypatch):
    """logs' module state and the signal handlers its loggers install, put
    back after the test."""
    monkeypatch.setattr(logs, "_secrets", set())
    monkeypatch.setattr(logs, "_destination", {"logfile": None, "nodaemon": True})
    monkeypatch.setattr(logs, "_level", {"level": LogLevel.info})
    handlers = {s: signal.getsignal(s) for s in logs.REOPEN_SIGNALS}
    yield
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


@pytest.mark.usefixtures("log_state")
def test_tac_observer_reads_twistds_options_as_the_plugin_does(tmp_path):
    config = make_config(environ={"MC_LOG_FORMAT": "json", "MC_LOG_LEVEL": "warn"})
    logfile = tmp_path / "mc.log"
    # -r: twistd has installed the reactor already; parsing again must not try.
    observer = logs.tac_observer(config, ["-r", "poll", "-y", "mc.tac", "--logfile",
                                          str(logfile)])
    assert observer is not None and logs._level["level"] is LogLevel.warn
    assert logs._destination == {"logfile": str(logfile), "nodaemon": False}
    assert make_config().service_token.reveal() in logs._secrets
    assert logs.tac_observer(config, ["-ny", "mc.tac", "--logger",
                                      "twisted.logger.textFileLogObserver"]) is None
    text = make_config()
    assert logs.tac_observer(text, ["-ny", "mc.tac", "--syslog"]) is None
    assert logs.tac_observer(text, ["-ny", "mc.tac"]) is not None


# --- Grafana -------------------------------------------------------------------

SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
            "histogram": ("_bucket", "_count", "_sum", "_created")}
REQUIRED = {"mc_meetings_current", "mc_meetings_max", "mc_participants_current",
            "mc_participants_max", "mc_meeting_assignments_total",
            "mc_assignment_duration_seconds_bucket", "mc_joins_total",
            "mc_join_duration_seconds_bucket", "mc_gc_heartbeats_total",
            "mc_gc_last_heartbeat_ack_age_seconds", "mc_reactor_lag_seconds", "mc_redis_up",
            "mc_fenced_out_total", "mc_reconnects_total", "mc_config_reloads_total",
            "mc_jwks_refresh_total", "mc_build_info"}


def exported_names(families):
    return {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}


def lint_exposition(text):
    """What ``promtool check metrics`` reports, on prometheus_client's parser:
    promtool comes only with Debian's whole Prometheus server package."""
    problems = []
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    helps = dict(re.findall(r"^# HELP (\S+) (.*)$", text, re.M))
    for name, kind in types.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            problems.append(f"{name}: not snake_case")
        if not helps.get(name, "").strip():
            problems.append(f"{name}: no help text")
        if (kind == "counter") != name.endswith("_total"):
            problems.append(f"{name}: only counters end in _total")
        if re.search(r"_(milli|micro|nano)seconds|_(minutes|hours|days)(_|$)|_(kilo|mega|giga)"
                     r"bytes", name):
            problems.append(f"{name}: not in base units")
        if kind != "histogram" and re.search(r"_(bucket|count|sum)$", name):
            problems.append(f"{name}: reserved suffix")
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for label in sample.labels:
                if not re.fullmatch(r"[a-z_][a-z0-9_]*", label):
                    problems.append(f"{sample.name}: label {label} not snake_case")
    return problems


def dashboard_queries(dashboard):
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return panels, [t["expr"] for p in panels for t in p["targets"]]


def test_dashboard_queries_only_what_a_running_mc_exports(mc_procs, fake_gc):
    dashboard = json.loads(DASHBOARD.read_text())
    panels, exprs = dashboard_queries(dashboard)
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource", "instance"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
    queried = set()
    for expr in exprs:
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
        for name, selector in re.findall(r"\b(mc_[a-z0-9_]+)(\{[^}]*\})?", expr):
            # Every query follows the MC picker: one MC, several, or the fleet.
            assert selector.startswith('{instance=~"$instance"'), expr
            queried.add(name)
    assert queried >= REQUIRED, REQUIRED - queried

    defined = exported_names(Metrics().registry.collect())
    mc = mc_procs()
    wait_for(mc.ready, 20, what="/readyz 200")
    assert assign_meeting(mc.grpc_target, "dash-meeting-1", MH, E2E_GC_TOKEN).accepted
    status, text = mc.http("/metrics")
    assert status == 200
    assert lint_exposition(text) == []
    exported = exported_names(text_string_to_metric_families(text))
    assert defined <= exported, defined - exported
    assert queried <= exported, queried - exported
    # Label names the queries use exist on the metric (where it has samples).
    labels = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    for expr in exprs:
        for name, selector in re.findall(r"\b(mc_[a-z0-9_]+)(\{[^}]*\})", expr):
            used = set(re.findall(r"([a-z_]+)\s*[=!~]", selector)) - {"instance"}
            assert used <= labels.get(name, used), (name, used)
        for grouping in re.findall(r"by \(([^)]*)\)", expr):
            names = re.findall(r"\b(mc_[a-z0-9_]+)", expr)
            known = set().union(*(labels.get(n, set()) for n in names), {"instance", "le"})
            if any(n in labels for n in names):
                assert {g.strip() for g in grouping.split(",")} <= known, expr


# --- the drain command (preStop, rolling upgrades) -----------------------------


class FakeMc:
    """Scripted /metrics readings, SIGUSR2s received, and a clock that moves
    only when the command sleeps."""

    def __init__(self, *readings):
        self.readings = list(readings)
        self.signals = []
        self.now = 0.0

    def read(self, url):
        reading = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
        if isinstance(reading, Exception):
            raise reading
        draining, participants = reading
        return {"mc_draining": draining, "mc_participants_current": participants}

    def run(self, wait=30, undrain=False):
        out = io.StringIO()
        status = drain.drain(7, "http://mc/metrics", wait, undrain, out=out,
                             clock=lambda: self.now, sleep=self.sleep, read=self.read,
                             kill=lambda pid, signum: self.signals.append((pid, signum)))
        return status, out.getvalue()

    def sleep(self, seconds):
        self.now += seconds


def test_drain_signals_once_and_waits_for_the_participants():
    mc = FakeMc((0, 3), (1, 3), (1, 1), (1, 0))
    status, out = mc.run()
    assert (status, mc.signals) == (0, [(7, signal.SIGUSR2)])
    assert "drained, 0 participants" in out


def test_drain_leaves_a_draining_mc_draining_and_undrain_only_a_draining_one():
    for reading, undrain in (((1, 0), False), ((0, 0), True)):
        mc = FakeMc(reading)
        assert mc.run(undrain=undrain)[0] == 0 and mc.signals == []
    mc = FakeMc((1, 4), (0, 4))
    assert mc.run(undrain=True)[0] == 0 and mc.signals == [(7, signal.SIGUSR2)]


def test_drain_gives_up_after_wait_and_reports_an_unreachable_mc():
    mc = FakeMc((0, 5), (1, 5))
    status, out = mc.run(wait=10)
    assert status == 1 and mc.now >= 10 and "5 participants connected" in out
    mc = FakeMc(urllib.error.URLError("connection refused"))
    status, out = mc.run()
    assert status == 2 and mc.signals == [] and "connection refused" in out


def test_drain_finds_the_mc_from_its_environment_and_pidfile(tmp_path, capsys):
    assert drain.metrics_url({}) == "http://127.0.0.1:8081/metrics"
    assert drain.metrics_url({"MC_HEALTH_BIND_ADDRESS": "[::]:9000"}) == (
        "http://[::1]:9000/metrics")
    assert drain.metrics_url({"MC_HEALTH_BIND_ADDRESS": "10.0.0.5:8081"}) == (
        "http://10.0.0.5:8081/metrics")
    assert drain.main(["--pidfile", str(tmp_path / "missing.pid")], environ={}) == 2
    assert drain.main(["--pid", "1"], environ={"MC_HEALTH_BIND_ADDRESS": "nonsense"}) == 2
    assert "MC_HEALTH_BIND_ADDRESS" in capsys.readouterr().out


def test_drain_reads_metrics_with_prometheus_clients_parser():
    """Timestamps, labels holding spaces and help text are the parser's
    business: a line split took ``3 1700000000000`` for a number."""
    text = ("# HELP mc_draining 1 while draining\n# TYPE mc_draining gauge\nmc_draining 1.0\n"
            '# HELP mc_x x\n# TYPE mc_x gauge\nmc_x{a="b c} 9"} 2.0\n'
            "# HELP mc_participants_current p\n# TYPE mc_participants_current gauge\n"
            "mc_participants_current 3 1700000000000\n")
    assert drain.unlabelled_samples(text) == {"mc_draining": 1.0,
                                              "mc_participants_current": 3.0}
    with pytest.raises(ValueError):
        drain.unlabelled_samples("mc_draining one\n")


def test_the_udp_receive_buffer_limit_is_raised_where_hosts_set_it():
    """What the WebTransport socket asks for is what the node tuning and
    the host's sysctl file allow, no less."""
    (daemonset,) = by_kind("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True, "net.core.rmem_max is the host's"
    (init,) = pod["initContainers"]
    assert init["command"] == ["sysctl", "-w", f"net.core.rmem_max={UDP_RECEIVE_BUFFER}"]
    settings = dict(line.replace(" ", "").split("=") for line in SYSCTL.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    assert settings == {"net.core.rmem_max": str(UDP_RECEIVE_BUFFER)}
