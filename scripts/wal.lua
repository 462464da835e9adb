-- wal: the library every script gets (SPEC §5). It holds the Go wal-listener's routing rules:
-- `listener.filter.tables` decides which changes are published, `listener.topicsMap` renames
-- the subject's last token, and the subject is `topic.` + topicPrefix + schema_table.
-- Logical messages (pg_logical_emit_message) go to `topic.` + topicPrefix + `message_` +
-- prefix, filtered by `listener.filter.messages`.
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

-- listener.filter.messages → { [prefix] = true }. Absent publishes every message; an empty
-- list publishes none. Prefixes match exactly.
local message_filter = nil
if config.listener.filter.messages ~= nil then
  message_filter = {}
  for _, prefix in ipairs(config.listener.filter.messages) do
    message_filter[prefix] = true
  end
end

-- The subject rule: in schema and table names (and message prefixes), every character that
-- cannot stand inside a NATS subject token — '.', '*', '>', whitespace and control characters,
-- ASCII or Unicode — is replaced with '_', so a name always yields exactly one valid token.
-- Everything else is kept as it is: upper case, quotes, '$', '-', non-ASCII letters.
local function token(name)
  name = string.gsub(name, "[%s%.%*>%c]", "_")
  -- Unicode whitespace and C1 controls, as UTF-8: U+0080-U+00A0, U+1680, U+2000-U+200A,
  -- U+2028, U+2029, U+202F, U+205F, U+3000.
  name = string.gsub(name, "\xC2[\x80-\xA0]", "_")
  name = string.gsub(name, "\xE1\x9A\x80", "_")
  name = string.gsub(name, "\xE2\x80[\x80-\x8A\xA8\xA9\xAF]", "_")
  name = string.gsub(name, "\xE2\x81\x9F", "_")
  name = string.gsub(name, "\xE3\x80\x80", "_")
  return name
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
  if event.action == "MESSAGE" then
    return message_filter == nil or message_filter[event.prefix] == true
  end
  if filter == nil then
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
