-- handler.lua - one function per GetResponse event type.
--
-- grwhd calls on.<type>(ev, meta) once per event, after the event is safely
-- in the spool; on.default takes any type without its own function.  `ev`
-- is the event's JSON as a table (JSON null is grwhd.null); `meta` has id,
-- attempt, received_at, type, webhook_id, request_id, remote_addr,
-- batch_index and batch_size.  Raising an error marks the event failed.
--
-- E-mail addresses are logged only at debug level (--log-level debug).
local log = grwhd.log
local on = {}

-- get(ev, "a", "b") is ev.a.b, or nil when a step is missing or not an
-- object (JSON null is grwhd.null, which cannot be indexed).
local function get(t, ...)
  for _, k in ipairs({ ... }) do
    if type(t) ~= "table" then
      return nil
    end
    t = t[k]
  end
  if t == grwhd.null then
    return nil
  end
  return t
end

-- Fields common to most events, safe to log at info level.
local function who(ev)
  return {
    contact = get(ev, "contact", "contactId"),
    list = get(ev, "contact", "campaign", "name"),
  }
end

function on.contact_added(ev, meta)
  local f = who(ev)
  f.origin = get(ev, "contact", "origin")
  log.info("contact subscribed", f)
  log.debug("subscriber address", { email = get(ev, "contact", "email") })
end

function on.contact_opened_message(ev, meta)
  local f = who(ev)
  f.message = get(ev, "message", "name")
  log.info("message opened", f)
end

function on.contact_clicked_message_link(ev, meta)
  local f = who(ev)
  f.message = get(ev, "message", "name")
  f.link = get(ev, "clickTrack", "name")
  log.info("link clicked", f)
end

function on.contact_clicked_sms_link(ev, meta)
  local f = who(ev)
  f.link = get(ev, "clickTrack", "name")
  log.info("sms link clicked", f)
end

function on.contact_copied(ev, meta)
  log.info("contact copied", who(ev))
end

function on.contact_moved(ev, meta)
  log.info("contact moved", who(ev))
end

function on.contact_removed_link(ev, meta)
  log.info("contact unsubscribed", who(ev))
end

function on.contact_removed_bounce(ev, meta)
  log.info("contact removed after a bounce", who(ev))
end

function on.contact_custom_field_changed(ev, meta)
  log.info("custom field changed", who(ev))
end

function on.contact_email_changed(ev, meta)
  log.info("contact e-mail changed", who(ev))
end

function on.contact_rejected(ev, meta)
  log.info("contact rejected", who(ev))
end

function on.contacts_import_finished(ev, meta)
  log.info("import finished", { account = get(ev, "account", "accountId") })
end

function on.custom_reports_file_status_changed(ev, meta)
  log.info("report file status changed",
           { account = get(ev, "account", "accountId") })
end

-- Types GetResponse adds later arrive here instead of being lost.
function on.default(ev, meta)
  log.warn("event type without a handler", { type = meta.type })
end

return on
