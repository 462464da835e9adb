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
  -- A backfilled row (READ) is the row as it is, like an INSERT: a table that lists `insert`
  -- gets its READ events too, so Go configs get backfilled rows without a change.
  if allowed.INSERT then
    allowed.READ = true
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

-- Subjects and filter decisions depend only on the relation (and the action), so each is
-- computed once and kept: the token rule above runs several gsubs, too many to repeat for
-- every event. The caches hold one entry per table or message prefix seen.
local table_subjects = {}   -- schema -> table -> subject
local message_subjects = {} -- prefix -> subject
local table_actions = {}    -- schema -> table -> { ACTION = true } (merged bare + qualified)

-- The inner table of a two-level cache, created on first use.
local function per_schema(cache, schema)
  local by_schema = cache[schema]
  if by_schema == nil then
    by_schema = {}
    cache[schema] = by_schema
  end
  return by_schema
end

local function table_subject(schema, tbl)
  local by_schema = per_schema(table_subjects, schema)
  local subject = by_schema[tbl]
  if subject == nil then
    local mapped = topics_map[schema .. "_" .. tbl]
    if mapped then
      subject = topic .. "." .. topic_prefix .. mapped
    else
      subject = topic .. "." .. topic_prefix .. token(schema) .. "_" .. token(tbl)
    end
    by_schema[tbl] = subject
  end
  return subject
end

local function message_subject(prefix)
  local subject = message_subjects[prefix]
  if subject == nil then
    subject = topic .. "." .. topic_prefix .. "message_" .. token(prefix)
    message_subjects[prefix] = subject
  end
  return subject
end

local function table_allowed(schema, tbl, action)
  if filter == nil then
    return true
  end
  local by_schema = per_schema(table_actions, schema)
  local actions = by_schema[tbl]
  if actions == nil then
    actions = {}
    for _, set in ipairs({ filter[schema .. "." .. tbl] or {}, filter[tbl] or {} }) do
      for a in pairs(set) do
        actions[a] = true
      end
    end
    by_schema[tbl] = actions
  end
  return actions[action] == true
end

local function message_allowed(prefix)
  return message_filter == nil or message_filter[prefix] == true
end

--- The default subject: topic.topicPrefix + (topicsMap[schema_table] or schema_table).
function wal.subject(event)
  if event.action == "MESSAGE" then
    return message_subject(event.prefix)
  end
  return table_subject(event.schema, event.table)
end

--- Whether listener.filter lets the event through.
function wal.allowed(event)
  local action = event.action
  if action == "MESSAGE" then
    return message_allowed(event.prefix)
  end
  return table_allowed(event.schema, event.table, action)
end

--- What the built-in default script returns: nil (filtered out) or the default subject, which
--- publishes the default JSON payload there. Reads each event field once.
function wal.default_route(event)
  local action = event.action
  if action == "MESSAGE" then
    local prefix = event.prefix
    if not message_allowed(prefix) then
      return nil
    end
    return message_subject(prefix)
  end
  local schema, tbl = event.schema, event.table
  if not table_allowed(schema, tbl, action) then
    return nil
  end
  return table_subject(schema, tbl)
end

return wal
