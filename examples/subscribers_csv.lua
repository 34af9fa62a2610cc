-- subscribers_csv.lua - append every new subscriber to a CSV file.
--
--   SUBSCRIBERS_CSV=/var/lib/grwhd/subscribers.csv \
--     grwhd --script examples/subscribers_csv.lua --secret "$SECRET"
--
-- Columns: occurred_at, contact_id, email, name, list, origin.  Each worker
-- opens the file for appending and writes whole lines, so lines from
-- several workers never interleave.  A write error raises, which marks the
-- event failed and keeps it in the spool.
local path = os.getenv("SUBSCRIBERS_CSV") or "subscribers.csv"
local out

-- Quote a field when it holds a comma, quote or line break (RFC 4180).
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

function init()
  local f, err = io.open(path, "a")
  if not f then
    error(err, 0)   -- "<path>: <why>"
  end
  f:setvbuf("line")
  if f:seek("end") == 0 then
    f:write("occurred_at,contact_id,email,name,list,origin\n")
  end
  out = f
end

function close()
  if out then
    out:close()
  end
end

function contact_added(ev, meta)
  local c = type(ev.contact) == "table" and ev.contact or {}
  local list = type(c.campaign) == "table" and c.campaign.name or nil
  local ok, err = out:write(table.concat({
    field(ev.event and ev.event.occurredAt), field(c.contactId),
    field(c.email), field(c.name), field(list), field(c.origin),
  }, ","), "\n")
  if not ok then
    error("cannot write " .. path .. ": " .. tostring(err))
  end
  grwhd.log.info("subscriber saved", { contact = c.contactId, list = list })
end
