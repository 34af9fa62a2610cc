-- forward_http.lua - send each new subscriber to an HTTP endpoint as JSON.
--
--   FORWARD_URL=https://crm.example.com/hooks/subscriber \
--   FORWARD_TOKEN=... \
--     grwhd --script examples/forward_http.lua --secret "$SECRET"
--
-- The endpoint gets a POST with {"contact_id", "email", "name", "list",
-- "occurred_at"}.  Anything but a 2xx answer (or no answer) raises, so
-- grwhd retries the event later with backoff and, after --max-attempts,
-- keeps it as dead for `grwhd spool retry`.
local url = os.getenv("FORWARD_URL")
local token = os.getenv("FORWARD_TOKEN")
local on = {}

function init()
  if not url or url == "" then
    error("set FORWARD_URL to the endpoint that takes new subscribers")
  end
end

local function text(v)
  if v == grwhd.null then
    return nil
  end
  return v
end

function on.contact_added(ev, meta)
  local c = type(ev.contact) == "table" and ev.contact or {}
  local headers = {
    ["Content-Type"] = "application/json",
    -- The same id on every attempt lets the endpoint drop repeats.
    ["Idempotency-Key"] = tostring(meta.webhook_id or meta.id) .. ":" ..
                          tostring(meta.batch_index),
  }
  if token then
    headers["Authorization"] = "Bearer " .. token
  end
  local status, body = grwhd.http.request{
    method = "POST",
    url = url,
    headers = headers,
    body = grwhd.json.encode({
      contact_id = text(c.contactId),
      email = text(c.email),
      name = text(c.name),
      list = type(c.campaign) == "table" and text(c.campaign.name) or nil,
      occurred_at = ev.event and text(ev.event.occurredAt),
    }),
    timeout = 10,
  }
  if not status then
    error("forward failed: " .. body)
  end
  if status < 200 or status > 299 then
    error(("forward got HTTP %d: %s"):format(status, body:sub(1, 200)))
  end
  grwhd.log.info("subscriber forwarded",
                 { contact = c.contactId, status = status })
end

return on
