"""Summarise a py-spy collapsed-stacks file (``py-spy record -f raw``, what
``bench/participants.py --profile`` writes): the share of samples each
function accounts for, inclusive (it or anything it called) and self (its own
lines), line numbers dropped.

    python bench/profsummary.py /tmp/prof/pb1-mc-2000-steady.txt [--top 30]
    python bench/profsummary.py FILE --under QuicEndpoint._flush   # within one caller
"""

import argparse
import re
import sys

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frames(stack):
    out = []
    for raw in stack.split(";"):
        m = _FRAME.match(raw)
        out.append(f"{m['fn']} ({m['file']})" if m else raw)
    return out


def load(path, under=None):
    """``[(frames, count)]``, optionally only the stacks through ``under`` (a
    function name), cut to start there."""
    stacks = []
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            fs = frames(stack)
            if under is not None:
                idx = next((i for i, fr in enumerate(fs) if fr.split(" (")[0] == under), None)
                if idx is None:
                    continue
                fs = fs[idx:]
            stacks.append((fs, int(count)))
    return stacks


def summarise(stacks, top=30):
    total = sum(c for _, c in stacks)
    inclusive, own = {}, {}
    for fs, c in stacks:
        for fr in set(fs):
            inclusive[fr] = inclusive.get(fr, 0) + c
        own[fs[-1]] = own.get(fs[-1], 0) + c
    return total, sorted(inclusive.items(), key=lambda kv: -kv[1])[:top], \
        sorted(own.items(), key=lambda kv: -kv[1])[:top]


def by_package(stacks):
    """Self samples by the top-level package of the leaf frame's file."""
    out = {}
    for fs, c in stacks:
        file = fs[-1].rsplit(" (", 1)[-1].rstrip(")")
        package = file.split("/", 1)[0] if "/" in file else file
        out[package] = out.get(package, 0) + c
    return sorted(out.items(), key=lambda kv: -kv[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--under", help="only the stacks through this function")
    args = parser.parse_args(argv)
    total, inclusive, own = summarise(load(args.file, args.under), args.top)
    print(f"{total} samples{' under ' + args.under if args.under else ''}")
    print("\ninclusive:")
    for fr, c in inclusive:
        print(f"  {100 * c / total:5.1f} %  {fr}")
    print("\nself:")
    for fr, c in own:
        print(f"  {100 * c / total:5.1f} %  {fr}")
    print("\nself, by package:")
    for package, c in by_package(load(args.file, args.under)):
        print(f"  {100 * c / total:5.1f} %  {package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
