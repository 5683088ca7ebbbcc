"""The cost of checking an incoming call's service token on a grpcio worker
(mc.ac.service_tokens): a token seen for the first time (read the header,
verify the EdDSA signature, check the claims) against one verified before
(a GC sends the same token for its whole life: the claims alone are checked
again). Run by hand; results in bench/results.md.

    .venv/bin/python bench/service_tokens.py [--calls N]
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mc.ac.service_tokens import ServiceTokenCheck  # noqa: E402
from mc.participants.tokens import parse_jwks  # noqa: E402
from mc.testing.ac import AcDouble  # noqa: E402

PATH = "/dark_tower.internal.v1.MeetingControllerService/AssignMeetingWithMh"


class Keys:
    def __init__(self, jwks):
        self._keys = parse_jwks(json.dumps(jwks).encode())

    def key(self, kid):
        return self._keys.get(kid)


class Now:
    def seconds(self):
        return time.time()


def per_call(check, authorizations, calls):
    started = time.perf_counter()
    for values in authorizations(calls):
        assert check.thd_authorize(PATH, values) == "ok"
    return (time.perf_counter() - started) / calls * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    ac = AcDouble()
    keys = Keys(ac.issuer.jwks())
    fresh = [["Bearer " + ac.mint("global-controller")] for _ in range(args.calls)]
    same = ["Bearer " + ac.mint("global-controller")]
    first = per_call(ServiceTokenCheck(keys, Now(), 5.0), lambda n: fresh[:n], args.calls)
    again = per_call(ServiceTokenCheck(keys, Now(), 5.0), lambda n: [same] * n, args.calls)
    print(f"load average {os.getloadavg()[0]:.1f}; per check: first sight {first:.0f} us, "
          f"seen before {again:.1f} us ({args.calls} calls each)")


if __name__ == "__main__":
    main()
