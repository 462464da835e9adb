-- The quick start's routing script (./quickstart.sh runs the service with it): the Go
-- wal-listener's rules for every table, except orders, which fan out by region with a header.
-- Try it without a database:
--   WAL_SCRIPTS_PATH=examples/route.lua wal-listener route -c config.yml --event -
function route(event)
  if event.table == "orders" and event.action ~= "DELETE" then
    local region = event.data.region or "unknown"
    -- wal_listener.orders.eu, wal_listener.orders.us, … (still captured by the stream
    -- wal_listener.>); wal.token makes any value a valid subject token.
    return config.publisher.topic .. ".orders." .. wal.token(region), event, { Region = region }
  end
  return wal.default_route(event) -- listener.filter and listener.topicsMap, as in the Go version
end
