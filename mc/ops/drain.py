"""``mc-drain`` (``python -m mc.ops.drain``): drain one MC and wait until its
participants have moved; for a Kubernetes preStop hook and for rolling
upgrades. The install puts ``mc-drain`` beside ``twistd`` (the image's
``/opt/mc/venv/bin/mc-drain``), so a hook needs no ``python`` on the PATH.

    mc-drain --pid 1 --wait 30            # in the MC's container
    mc-drain --pidfile mc.pid --undrain   # back in service

SIGUSR2 toggles drain, so the MC is signalled only when its ``/metrics`` says
it is not in the wanted state yet: running this twice, or on an MC an operator
drained already, leaves it draining. The metrics are read from
``MC_HEALTH_BIND_ADDRESS`` (the container's own environment) unless ``--url``
is given. Exit status: 0 once draining with no participant left (or, with
``--undrain``, once not draining); 1 when ``--wait`` seconds pass first (the
stop that follows waits again, up to MC_SHUTDOWN_GRACE_SECONDS); 2 when the MC
cannot be read or signalled.
"""

import argparse
import os
import signal
import sys
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mc.config import SETTINGS_BY_NAME, parse_address
from mc.errors import ConfigError

POLL_SECONDS = 0.5
HTTP_TIMEOUT = 2.0


def metrics_url(environ):
    """``/metrics`` of the MC configured by ``environ``, reached on loopback
    when it listens on every address."""
    setting = SETTINGS_BY_NAME["health_listen"]
    address = parse_address(setting.env, environ.get(setting.env) or setting.default)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{address.port}/metrics"


def unlabelled_samples(text):
    """``{name: value}`` of the exposition's samples without labels, read by
    prometheus_client's own parser (escapes, timestamps, NaN and comments
    are its business, not a line split's)."""
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def read_gauges(url):
    """The MC's unlabelled samples, ``{name: value}``."""
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
        return unlabelled_samples(response.read().decode())


def _done(gauges, undrain):
    if undrain:
        return gauges["mc_draining"] == 0
    return gauges["mc_draining"] == 1 and gauges["mc_participants_current"] == 0


def drain(pid, url, wait, undrain=False, out=sys.stdout, clock=time.monotonic,
          sleep=time.sleep, read=read_gauges, kill=os.kill):
    """Signal ``pid`` if it is not yet in the wanted state, then wait up to
    ``wait`` seconds for it; the exit status described above."""
    want = "undrained" if undrain else "drained"
    try:
        gauges = read(url)
        if gauges["mc_draining"] != (0 if undrain else 1):
            kill(pid, signal.SIGUSR2)
            print(f"mc drain: sent SIGUSR2 to pid {pid}", file=out, flush=True)
        deadline = clock() + wait
        while not _done(gauges, undrain):
            if clock() >= deadline:
                print(f"mc drain: not {want} after {wait:g}s: "
                      f"{gauges['mc_participants_current']:g} participants connected",
                      file=out, flush=True)
                return 1
            sleep(POLL_SECONDS)
            gauges = read(url)
    except (OSError, urllib.error.URLError, KeyError, ValueError) as e:
        print(f"mc drain: cannot drain pid {pid} through {url}: {e}", file=out, flush=True)
        return 2
    print(f"mc drain: {want}, {gauges['mc_participants_current']:g} participants connected",
          file=out, flush=True)
    return 0


def main(argv=None, environ=None):
    parser = argparse.ArgumentParser(prog="mc-drain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--pid", type=int, help="the MC's pid (1 in its own container)")
    target.add_argument("--pidfile", help="twistd's --pidfile")
    parser.add_argument("--wait", type=float, default=30.0,
                        help="seconds to wait for the participants to move [default: 30]")
    parser.add_argument("--undrain", action="store_true", help="end a drain instead")
    parser.add_argument("--url", help="the MC's /metrics [default: from MC_HEALTH_BIND_ADDRESS]")
    args = parser.parse_args(argv)
    try:
        url = args.url or metrics_url(os.environ if environ is None else environ)
        pid = args.pid
        if pid is None:
            with open(args.pidfile) as f:
                pid = int(f.read().strip())
    except (OSError, ValueError, ConfigError) as e:
        print(f"mc drain: {e}", flush=True)
        return 2
    return drain(pid, url, args.wait, args.undrain)


if __name__ == "__main__":
    sys.exit(main())
