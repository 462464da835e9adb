-- wal: the library every script gets (SPEC §5). It holds the Go wal-listener's routing rules:
-- `listener.filter.tables` decides which changes are published, `listener.topicsMap` renames
-- the subject's last token, and the subject is `topic.` + topicPrefix + schema_table.
-- The built-in default script is just `route = wal.default_route`; a custom script can call
-- wal.default_route(event) or wal.subject(event) to extend these rules instead of rewriting them.
--
-- This file is compiled into the binary; `config` is the read-only configuration table.

local wal = {}

local topic = config.publisher.topic
local topic_prefix = config.publisher.topicPrefix or ""
local topics_map = config.listener.topicsMap or {}

-- listener.filter.tables → { [name] = { INSERT = true, ... } }. A bare table name matches that
-- table in any schema (the Go behaviour); "schema.table" matches that schema only. No filter at
-- all publishes every table.
local filter = nil
for name, actions in pairs(config.listener.filter.tables or {}) do
  filter = filter or {}
  local allowed = {}
  for _, action in ipairs(actions) do
    allowed[string.upper(action)] = true
  end
  filter[name] = allowed
end

-- NATS forbids space, '.', '*', '>' and control characters inside a subject token; each is
-- replaced with '_' so that a schema or table name always yields exactly one valid token.
local function token(name)
  return (string.gsub(name, "[%s%.%*>%c]", "_"))
end
wal.token = token

--- The default subject: topic.topicPrefix + (topicsMap[schema_table] or schema_table).
function wal.subject(event)
  if event.action == "MESSAGE" then
    return topic .. "." .. topic_prefix .. "message_" .. token(event.prefix)
  end
  local key = event.schema .. "_" .. event.table
  local mapped = topics_map[key]
  if mapped then
    return topic .. "." .. topic_prefix .. mapped
  end
  return topic .. "." .. topic_prefix .. token(event.schema) .. "_" .. token(event.table)
end

--- Whether listener.filter lets the event through.
function wal.allowed(event)
  if filter == nil or event.action == "MESSAGE" then
    return true
  end
  local action = event.action
  local qualified = filter[event.schema .. "." .. event.table]
  if qualified and qualified[action] then
    return true
  end
  local bare = filter[event.table]
  return bare ~= nil and bare[action] == true
end

--- What the built-in default script returns: nil (filtered out) or the default subject, which
--- publishes the default JSON payload there.
function wal.default_route(event)
  if not wal.allowed(event) then
    return nil
  end
  return wal.subject(event)
end

return wal
