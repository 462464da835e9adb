-- The built-in default script: the Go wal-listener's YAML filter and topicsMap, nothing more.
-- It is what runs when `scripts.path` is not set. Copy it as a starting point for your own.
function route(event)
  return wal.default_route(event)
end
