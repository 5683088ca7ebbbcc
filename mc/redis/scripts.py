"""The Lua scripts, read once from package data, each with its SHA1, and the
operations that run them: EVALSHA (loading a script Redis forgot) and WAIT
(a claim made durable on the replicas required).

Every script is ``lua/_fence.lua`` (the fencing rule and the reply convention)
followed by its own file, so the rule is written once; the SHA1 is of that
whole text, which is what EVALSHA and SCRIPT LOAD see. An operation is a
function of one pooled connection returning a Deferred
(``mc.redis.connection.RedisConnection.call`` runs it).
"""

import hashlib
from dataclasses import dataclass
from importlib.resources import files

import txredisapi
from twisted.logger import Logger

from mc.errors import ReplicasShort

_PRELUDE = "_fence.lua"

#: Reply statuses, the first element of every script's reply table.
OK = "ok"
FENCED = "fenced"
CORRUPT = "corrupt"
LATE = "late"
STALE = "stale"
NOREPLICAS = "noreplicas"
ERROR = "error"

log = Logger(namespace="mc.redis.scripts")


@dataclass(frozen=True)
class Script:
    name: str
    source: str
    sha: str


def _load(name, prelude):
    source = prelude + "\n" + files("mc.redis").joinpath("lua", f"{name}.lua").read_text("utf-8")
    return Script(name, source, hashlib.sha1(source.encode()).hexdigest())


_prelude = files("mc.redis").joinpath("lua", _PRELUDE).read_text("utf-8")

CLAIM_AND_WRITE = _load("claim_and_write", _prelude)
CONFIRM = _load("confirm", _prelude)
REASSERT = _load("reassert", _prelude)
WRITE_ASSIGNMENT = _load("write_assignment", _prelude)
WRITE_STATE = _load("write_state", _prelude)
DELETE = _load("delete", _prelude)
RECOVER = _load("recover", _prelude)
NEWS = _load("news", _prelude)
FORGET_NEWS = _load("forget_news", _prelude)

ALL = (CLAIM_AND_WRITE, CONFIRM, REASSERT, WRITE_ASSIGNMENT, WRITE_STATE, DELETE, RECOVER, NEWS,
       FORGET_NEWS)


def evalsha(script, keys, args):
    """The operation that runs ``script``, loading it once if Redis lost it."""
    def run(conn):
        d = conn.evalsha(script.sha, keys, args)
        d.addErrback(reload, conn)
        return d

    def reload(failure, conn):
        # Redis forgets scripts on restart and SCRIPT FLUSH: load, retry once.
        failure.trap(txredisapi.ScriptDoesNotExist)
        log.info("Redis lost script {script}; loading it again", script=script.name)
        d = conn.script_load(script.source)
        return d.addCallback(lambda _: conn.evalsha(script.sha, keys, args))

    return run


def wait_replicas(conn, acks, replica_ms, what):
    """``WAIT acks replica_ms`` on ``conn``: every write made on it so far
    reached ``acks`` replicas, or ReplicasShort."""
    def acknowledged(replicas):
        if int(replicas) < acks:
            raise ReplicasShort(f"{what} reached {int(replicas)} of the {acks} replicas "
                                f"required within {replica_ms} ms")
        return int(replicas)

    return conn.execute_command("WAIT", acks, replica_ms).addCallback(acknowledged)
