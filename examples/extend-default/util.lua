-- A module loaded with require("util") from the scripts directory.
local util = {}

function util.versioned(subject)
  return subject .. ".v1"
end

return util
