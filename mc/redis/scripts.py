"""The fencing Lua scripts: read once from package data, each with its SHA1.

Every script is ``lua/_fence.lua`` (the fencing rule and the reply convention)
followed by its own file, so the rule is written once; the SHA1 is of that
whole text, which is what EVALSHA and SCRIPT LOAD see.
"""

import hashlib
from dataclasses import dataclass
from importlib.resources import files

_PRELUDE = "_fence.lua"

#: Reply statuses, the first element of every script's reply table.
OK = "ok"
FENCED = "fenced"
CORRUPT = "corrupt"


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


def _load(name, prelude):
    source = prelude + "\n" + files("mc.redis").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


_prelude = files("mc.redis").joinpath("lua", _PRELUDE).read_text("utf-8")

CLAIM = _load("claim", _prelude)
CLAIM_AND_WRITE = _load("claim_and_write", _prelude)
WRITE_ASSIGNMENT = _load("write_assignment", _prelude)
WRITE_STATE = _load("write_state", _prelude)
DELETE = _load("delete", _prelude)
RECOVER = _load("recover", _prelude)

ALL = (CLAIM, CLAIM_AND_WRITE, WRITE_ASSIGNMENT, WRITE_STATE, DELETE, RECOVER)
