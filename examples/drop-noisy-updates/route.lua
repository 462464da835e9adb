-- Drop updates that only touch updated_at (needs REPLICA IDENTITY FULL to see the old row).
local ignored = { updated_at = true }

local function only_noise(event)
  if event.action ~= "UPDATE" then return false end
  local old, new = event.dataOld, event.data
  if next(old) == nil then return false end -- no old row: cannot tell, publish
  for column, value in pairs(new) do
    if not ignored[column] and old[column] ~= value then return false end
  end
  return true
end

function route(event)
  if only_noise(event) then return nil end
  return wal.default_route(event)
end
