"""What the MC needs from the fleet's Redis, checked once at start with a
warning (a managed Redis may refuse CONFIG; then the warning says so):

- ``maxmemory-policy noeviction``: an evicted generation or state key lets
  a claim miss the owner it must tell;
- persistence (AOF, or RDB snapshots): a restart without it loses every
  claim; with RDB alone a restart rolls back to the last snapshot, which
  the MCs detect (mc/redis/marker.py) and repair by writing back, fenced.
"""

from twisted.logger import Logger

log = Logger(namespace="mc.redis.requirements")


def _info_fields(text):
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


async def check(run, target):
    """Warn about what ``run(operation)`` (RedisConnection.run) shows of the
    eviction policy and persistence; never fails."""
    try:
        reply = await run(lambda conn: conn.execute_command("CONFIG", "GET", "maxmemory-policy"))
        policy = reply[1] if isinstance(reply, list) and len(reply) == 2 else None
    except Exception as e:
        log.warn("Redis {target}: cannot read maxmemory-policy ({why}); it must be noeviction",
                 target=str(target), why=str(e))
        policy = "noeviction"
    if policy != "noeviction":
        log.warn("Redis {target}: maxmemory-policy is {policy}, not noeviction: an evicted "
                 "meeting key can leave a meeting on two MCs", target=str(target), policy=policy)
    try:
        info = _info_fields(await run(lambda conn: conn.execute_command("INFO", "persistence")))
    except Exception as e:
        log.warn("Redis {target}: cannot read INFO persistence ({why})", target=str(target),
                 why=str(e))
        return
    aof = info.get("aof_enabled", "0").strip() == "1"
    rdb = info.get("rdb_last_save_time") is not None and info.get("rdb_saves", "0") != "0"
    if not aof:
        log.warn("Redis {target}: no append-only file; a restart {what}", target=str(target),
                 what="rolls back to the last snapshot (the MCs detect it and write back)" if rdb
                 else "without persistence loses every claim (the MCs write back what they host)")
