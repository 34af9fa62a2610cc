-- handler.lua - handler used by the end-to-end suite (tests/e2e/run.py).
--
-- Every call appends one line to the file named by $GRWHD_TEST_OUT:
--   fn|meta.type|contactId|meta.id|attempt|batch_index|batch_size|
--   webhook_id|request_id|remote_addr|ev.seq
-- The file is opened, written and closed per call, so a kill -9 of the
-- daemon loses no line already written, and lines from several workers do
-- not interleave (one short write in append mode).
--
-- $GRWHD_TEST_SLEEP (seconds) makes every call slow; the sleep comes before
-- the line is written, so a call cut short by a kill leaves no line.
-- $GRWHD_TEST_FAIL_TYPE makes that event type raise error("boom").
-- $GRWHD_TEST_FAIL_ATTEMPTS=N makes every call raise while attempt <= N.

local out_path = os.getenv("GRWHD_TEST_OUT")
local sleep_s = tonumber(os.getenv("GRWHD_TEST_SLEEP") or "")
local fail_type = os.getenv("GRWHD_TEST_FAIL_TYPE")
local fail_attempts = tonumber(os.getenv("GRWHD_TEST_FAIL_ATTEMPTS") or "")

local TYPES = {
  "contact_opened_message", "contact_clicked_message_link",
  "contact_clicked_sms_link", "contact_added", "contact_copied",
  "contact_moved", "contact_removed_link", "contact_removed_bounce",
  "contact_custom_field_changed", "contact_email_changed",
  "contact_rejected", "contacts_import_finished",
  "custom_reports_file_status_changed",
}

-- A field as text that cannot break the line format.
local function field(v)
  if v == nil or v == grwhd.null then
    return "-"
  end
  return (tostring(v):gsub("[|\r\n]", "_"))
end

local function record(fn, ev, meta)
  if fail_type and fail_type ~= "" and meta.type == fail_type then
    error("boom")
  end
  if fail_attempts and (tonumber(meta.attempt) or 1) <= fail_attempts then
    error("boom on attempt " .. tostring(meta.attempt))
  end
  if sleep_s and sleep_s > 0 then
    os.execute(string.format("sleep %.3f", sleep_s))
  end
  if not out_path or out_path == "" then
    return
  end
  local c = type(ev.contact) == "table" and ev.contact or {}
  local line = table.concat({
    fn, field(meta.type), field(c.contactId), field(meta.id),
    field(meta.attempt), field(meta.batch_index), field(meta.batch_size),
    field(meta.webhook_id), field(meta.request_id), field(meta.remote_addr),
    field(ev.seq),
  }, "|") .. "\n"
  local f = assert(io.open(out_path, "a"))
  f:write(line)
  f:close()
end

local on = {}

for _, t in ipairs(TYPES) do
  on[t] = function(ev, meta) record(t, ev, meta) end
end

function on.default(ev, meta)
  record("default", ev, meta)
end

return on
