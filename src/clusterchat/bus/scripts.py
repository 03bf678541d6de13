"""The Lua scripts the Redis bus runs, each one atomic in Redis.

Presence (claim, release, locate) must not race between nodes; the heartbeat
and the reaping of dead nodes must see one consistent view of who is alive.
"""

# KEYS: the user's presence, the node's members set, the user's full mark.
# ARGV: prefix, node id, uid, members ttl ms, 1 if the user's mailbox is
# full (else 0). The mark (the node's id, so a stale one never matches a
# later holder) is set or cleared with the claim: no sender sees the claim
# without it.
CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. 'node:' .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], ARGV[2])
else
  redis.call('DEL', KEYS[3])
end
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. ARGV[3])
return 1
"""

# KEYS: the user's presence, the node's members set, the user's full mark.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  redis.call('DEL', KEYS[3])
end
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. ARGV[3])
return 1
"""

# KEYS: the user's presence, the user's full mark. ARGV: prefix, node id,
# uid, 1 to mark the mailbox full (0 to clear it). Only by the node holding
# the user; senders drop their cached route (the 'p' event) and look again.
MARK = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return 0
end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[2], ARGV[2])
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. ARGV[3])
return 1
"""

# KEYS: n users' presence keys, then the same users' full marks. ARGV:
# prefix. Two entries per user: the node holding them (false if none, or
# that node is dead), and 1 if that node marked their mailbox full (MARK).
LOCATE = """
local out = {}
local n = #KEYS / 2
for i = 1, n do
  local holder = redis.call('GET', KEYS[i])
  if holder and redis.call('EXISTS', ARGV[1] .. 'node:' .. holder) == 1 then
    out[2 * i - 1] = holder
    if redis.call('GET', KEYS[n + i]) == holder then
      out[2 * i] = 1
    else
      out[2 * i] = 0
    end
  else
    out[2 * i - 1] = false
    out[2 * i] = 0
  end
end
return out
"""

# KEYS: node key, nodes zset, members set. ARGV: ttl ms, node id, members ttl ms.
# Returns 0 if the heartbeat had lapsed (survivors may have reaped our users).
HEARTBEAT = """
local alive = redis.call('EXISTS', KEYS[1])
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[2])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return alive
"""

# KEYS: nodes zset. ARGV: prefix, grace ms, reaper's node id. Deletes what
# nodes silent past the grace left behind: their users' presence (if still
# theirs) and member sets. Their copies of local deliveries awaiting receipts
# (``keep:<id>``) are renamed for the reaper to store and listed in its
# ``claims:<reaper>`` set, with the claims the dead node had not finished
# storing: returns one entry per node reaped.
REAP = """
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[2])
local reaped = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)) do
  if id ~= ARGV[3] and redis.call('EXISTS', ARGV[1] .. 'node:' .. id) == 0 then
    local members = ARGV[1] .. 'members:' .. id
    for _, uid in ipairs(redis.call('SMEMBERS', members)) do
      local key = ARGV[1] .. 'user:' .. uid
      if redis.call('GET', key) == id then
        redis.call('DEL', key)
        redis.call('DEL', ARGV[1] .. 'full:' .. uid)
        redis.call('PUBLISH', ARGV[1] .. 'events', 'p' .. uid)
      end
    end
    redis.call('DEL', members)
    redis.call('ZREM', KEYS[1], id)
    local keep = ARGV[1] .. 'keep:' .. id
    local mine = ARGV[1] .. 'claims:' .. ARGV[3]
    if redis.call('EXISTS', keep) == 1 then
      local claimed = keep .. ':reaped-by:' .. ARGV[3] .. ':' .. now[1] .. now[2]
      redis.call('RENAME', keep, claimed)
      redis.call('SADD', mine, claimed)
    end
    local theirs = ARGV[1] .. 'claims:' .. id
    for _, name in ipairs(redis.call('SMEMBERS', theirs)) do
      redis.call('SADD', mine, name)
    end
    redis.call('DEL', theirs)
    reaped[#reaped + 1] = id
  end
end
return reaped
"""

# KEYS: a node's keep hash, the name to claim it under, the node's claims
# set. At a node's start: what its previous process (same id) left to store,
# claimed by exactly one, and listed with the claims it had not finished.
CLAIM_KEEP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[2])
  redis.call('SADD', KEYS[3], KEYS[2])
  return 1
end
return 0
"""
