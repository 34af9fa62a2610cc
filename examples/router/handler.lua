-- router/handler.lua - a handler split into modules beside it.
--
--   grwhd --script examples/router/handler.lua --secret "$SECRET"
--
-- `require` looks in the script's folder first, so routes.lua next to this
-- file is found wherever grwhd runs from; editing either file reloads both.
local routes = require("routes")
local on = {}

-- Every event goes through the routing table; types it does not name are
-- counted and logged at debug level.
function on.default(ev, meta)
  local route = routes.for_type(meta.type)
  if route then
    route(ev, meta)
  else
    routes.unrouted = routes.unrouted + 1
    grwhd.log.debug("no route", { type = meta.type })
  end
end

return on
