-- Fan-out: every change to the default subject, and order changes also to an audit subject.
-- Each extra message gets its own Nats-Msg-Id (the event id + "-1", "-2", …).
function route(event)
  local subject = wal.default_route(event)
  if subject == nil then return nil end
  local messages = { { subject = subject } }
  if event.table == "orders" then
    messages[#messages + 1] = {
      subject = "wal_listener.audit.orders",
      payload = { id = event.id, action = event.action, lsn = event.lsn },
    }
  end
  return messages
end
