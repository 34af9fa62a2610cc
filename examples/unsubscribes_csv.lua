-- unsubscribes_csv.lua - one CSV file per list of the contacts who left it.
--
--   UNSUB_DIR=/var/lib/grwhd/unsubscribes \
--     grwhd --script examples/unsubscribes_csv.lua --secret "$SECRET"
--
-- contact_removed_link (unsubscribed through a link) and
-- contact_removed_bounce add a line "occurred_at,contact_id,email,reason"
-- to UNSUB_DIR/<list name>.csv, made with its header line when new.
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

local function append(ev, reason)
  local c = ev.contact or {}
  local list = type(c.campaign) == "table" and c.campaign.name or nil
  local path = file_for(list)
  local f, err = io.open(path, "a")
  if not f then
    error("cannot open " .. path .. ": " .. tostring(err))
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
