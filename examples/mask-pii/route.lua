-- Mask or drop personal data before it leaves the database.
local masked = { email = true, phone = true }
local dropped = { password_hash = true, ssn = true }

local function clean(row)
  local out = {}
  for column, value in pairs(row) do
    if dropped[column] then
      -- left out entirely
    elseif masked[column] and type(value) == "string" then
      out[column] = string.sub(value, 1, 1) .. "***"
    else
      out[column] = value
    end
  end
  return out
end

function route(event)
  local subject = wal.default_route(event)
  if subject == nil then return nil end
  return subject, {
    id = event.id, schema = event.schema, table = event.table, action = event.action,
    data = clean(event.data), dataOld = clean(event.dataOld), commitTime = event.commitTime,
  }
end
