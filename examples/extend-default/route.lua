-- Extend the default rules instead of replacing them: keep listener.filter and topicsMap,
-- but send deletes to a separate subject and version every subject.
local util = require("util")

function route(event)
  local subject = wal.default_route(event)
  if subject == nil then return nil end
  if event.action == "DELETE" then
    subject = subject .. ".deleted"
  end
  return util.versioned(subject)
end
