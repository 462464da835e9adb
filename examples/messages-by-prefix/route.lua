-- Transactional messaging without an outbox table: the application writes
--   SELECT pg_logical_emit_message(true, 'orders', '{"type":"OrderPlaced","id":42}');
-- in the same transaction as its row changes. Here each message prefix gets its own subject,
-- the JSON content is published as the payload, and row changes are not published at all.
function route(event)
  if event.action ~= "MESSAGE" then return nil end
  local ok, body = pcall(json.decode, event.content)
  if not ok then body = { raw = event.content } end
  return "wal_listener.events." .. wal.token(event.prefix), body, { ["Event-Type"] = body.type }
end
