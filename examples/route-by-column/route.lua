-- Route orders by a column value: one subject per region, the tenant as a header.
function route(event)
  if event.table ~= "orders" then return nil end
  local row = event.action == "DELETE" and event.dataOld or event.data
  local region = row.region or "unknown"
  return "wal_listener.orders." .. wal.token(region), event, { Tenant = tostring(row.tenant) }
end
