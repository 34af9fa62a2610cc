-- routes.lua - which function takes which event type (used by handler.lua).
local M = { unrouted = 0 }

local function list_of(ev)
  local c = type(ev.contact) == "table" and ev.contact or {}
  return type(c.campaign) == "table" and c.campaign.name or nil
end

local function engagement(ev, meta)
  grwhd.log.info("engagement",
                 { type = meta.type, list = list_of(ev),
                   contact = ev.contact and ev.contact.contactId })
end

local function membership(ev, meta)
  grwhd.log.info("membership",
                 { type = meta.type, list = list_of(ev),
                   contact = ev.contact and ev.contact.contactId })
end

local table_of = {
  contact_opened_message = engagement,
  contact_clicked_message_link = engagement,
  contact_clicked_sms_link = engagement,
  contact_added = membership,
  contact_copied = membership,
  contact_moved = membership,
  contact_removed_link = membership,
  contact_removed_bounce = membership,
}

function M.for_type(t)
  return table_of[t]
end

return M
