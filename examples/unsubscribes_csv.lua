-- unsubscribes_csv.lua - one CSV file per list of the contacts who left it.
--
--   UNSUB_DIR=/var/lib/grwhd/unsubscribes \
--     grwhd --script examples/unsubscribes_csv.lua --secret "$SECRET"
--
-- contact_removed_link (unsubscribed through a link) and
-- contact_removed_bounce add a line "occurred_at,contact_id,email,reason"
-- to UNSUB_DIR/<list name>.csv, made with its header line when new.
-- UNSUB_DIR must be a folder grwhd can write to (under the systemd unit,
-- one below /var/lib/grwhd); the script refuses to load otherwise.
local dir = os.getenv("UNSUB_DIR") or "unsubscribes"
local on = {}

local function field(v)
  if v == nil or v == grwhd.null then
    return ""
  end
  v = tostring(v)
  if v:find('[,"\r\n]') then
    v = '"' .. v:gsub('"', '""') .. '"'
  end
  return v
end

-- A list name as a file name: letters, digits, '-', '_' and '.' only.
local function file_for(list)
  local name = tostring(list or "unknown"):gsub("[^%w%-_.]", "_")
  if name == "" or name:sub(1, 1) == "." then
    name = "_" .. name
  end
  return dir .. "/" .. name .. ".csv"
end

-- Fails the load (the daemon then does not start, or keeps the old
-- script) rather than every unsubscribe later.
function on.init()
  local probe = dir .. "/.grwhd-probe"
  local f, err = io.open(probe, "a")
  if not f then
    error("UNSUB_DIR must be a folder grwhd can write to: " .. err, 0)
  end
  f:close()
  os.remove(probe)
end

local function append(ev, reason)
  local c = type(ev.contact) == "table" and ev.contact or {}
  local list = type(c.campaign) == "table" and c.campaign.name or nil
  local path = file_for(list)
  local f, err = io.open(path, "a")
  if not f then
    error(err, 0)   -- "<path>: <why>"
  end
  if f:seek("end") == 0 then
    f:write("occurred_at,contact_id,email,reason\n")
  end
  local ok, werr = f:write(table.concat({
    field(ev.event and ev.event.occurredAt), field(c.contactId),
    field(c.email), reason,
  }, ","), "\n")
  f:close()
  if not ok then
    error("cannot write " .. path .. ": " .. tostring(werr))
  end
  grwhd.log.info("unsubscribe saved",
                 { contact = c.contactId, list = list, reason = reason })
end

function on.contact_removed_link(ev, meta)
  append(ev, "link")
end

function on.contact_removed_bounce(ev, meta)
  append(ev, "bounce")
end

return on
