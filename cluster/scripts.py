"""The registry's Lua scripts: each runs atomically in Redis, on Redis's own clock (`TIME`), so
that workers on machines whose clocks differ still agree on what has expired.

Keys (prefix `vg:`): `lease:<source>` = `<node>|<token>`; `fence` the token counter;
`owned:<node>` sorted set source → lease expiry (a node's load, and its capacity check);
`run` a token made by the first worker to touch a fresh Redis (a new one after a restart);
`sessions` / `subject:<subject>` sorted sets session id → expiry (admission).
"""

NOW_MS = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) "

# A new grant: the token only grows, never below the Redis clock in ms (so it keeps growing
# after Redis restarts empty). Needs KEYS[1] lease, KEYS[2] fence, KEYS[3] owned; ARGV[1] node,
# ARGV[2] ttl_ms, ARGV[3] source.
_GRANT = ("local token = redis.call('INCR', KEYS[2]) "
          "if token < now then redis.call('SET', KEYS[2], now) token = now end "
          "local value = ARGV[1] .. '|' .. token "
          "redis.call('SET', KEYS[1], value, 'PX', ARGV[2]) "
          "redis.call('ZADD', KEYS[3], now + ARGV[2], ARGV[3]) redis.call('PEXPIRE', KEYS[3], ARGV[2]) "
          "return value ")

# KEYS: lease, fence, owned, run; ARGV: node, ttl_ms, source, capacity (0: none), run token.
# → the holder's value (ours if it was free), 'full' (this node is at its capacity), or
# 'run:<token>' (Redis is not the one this node knew: it restarted, owners are re-asserting)
TAKE = (NOW_MS + "local cur = redis.call('GET', KEYS[1]) if cur then return cur end "
        "local run = redis.call('GET', KEYS[4]) "
        "if run ~= ARGV[5] then return 'run:' .. (run or '') end "
        "redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now) "
        "if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then return 'full' end "
        + _GRANT)

# KEYS: lease, fence, owned; ARGV: node, ttl_ms, source, token → ours renewed, ours re-asserted
# with a new token (it was gone), or another node's value (we are stale)
RENEW = (NOW_MS + "local cur = redis.call('GET', KEYS[1]) local mine = ARGV[1] .. '|' .. ARGV[4] "
         "if cur == mine then redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
         "redis.call('ZADD', KEYS[3], now + ARGV[2], ARGV[3]) redis.call('PEXPIRE', KEYS[3], ARGV[2]) "
         "return mine end "
         "if cur then return cur end " + _GRANT)

# KEYS: lease, owned; ARGV: value, source
RELEASE = ("if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('ZREM', KEYS[2], ARGV[2]) "
           "return redis.call('DEL', KEYS[1]) end return 0")

# KEYS: sessions, subject; ARGV: id, ttl_ms, max_total, max_per_subject (0: none)
# → ok | server_full | subject_limit (an id already admitted is ok again)
ADMIT = (NOW_MS + "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) "
         "redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now) "
         "if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'ok' end "
         "if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 'server_full' end "
         "if tonumber(ARGV[4]) > 0 and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then "
         "return 'subject_limit' end "
         "redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1]) redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[1]) "
         "redis.call('PEXPIRE', KEYS[2], ARGV[2]) return 'ok'")

# KEYS: sessions, subject; ARGV: id, ttl_ms → 1 if the place was still held (kept longer), 0 if it
# had expired (then it is not revived: ADMIT decides again)
HOLD = (NOW_MS + "local score = redis.call('ZSCORE', KEYS[1], ARGV[1]) "
        "if not score or tonumber(score) <= now then return 0 end "
        "redis.call('ZADD', KEYS[1], now + ARGV[2], ARGV[1]) redis.call('ZADD', KEYS[2], now + ARGV[2], ARGV[1]) "
        "redis.call('PEXPIRE', KEYS[2], ARGV[2]) return 1")
