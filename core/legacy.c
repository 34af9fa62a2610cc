/* legacy.c - GetResponse's older GET callbacks in the webhook shape. */
#include "legacy.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <cJSON.h>

static const struct {
    const char *action;
    const char *type;
} types[] = {
    {"subscribe", "contact_added"},
    {"open", "contact_opened_message"},
    {"click", "contact_clicked_message_link"},
    {"unsubscribe", "contact_removed_link"},
};

/* Where a callback parameter lands in the webhook shape. */
static const struct {
    const char *param;
    const char *object;     /* member of the event, "" for the event */
    const char *sub;        /* member of that object, or NULL */
    const char *name;
} fields[] = {
    {"CONTACT_ID", "contact", NULL, "contactId"},
    {"contact_email", "contact", NULL, "email"},
    {"contact_name", "contact", NULL, "name"},
    {"contact_ip", "contact", NULL, "ip"},
    {"contact_origin", "contact", NULL, "origin"},
    {"CAMPAIGN_ID", "contact", "campaign", "campaignId"},
    {"campaign_name", "contact", "campaign", "name"},
    {"MESSAGE_ID", "message", NULL, "resourceId"},
    {"message_name", "message", NULL, "name"},
    {"message_subject", "message", NULL, "subject"},
    {"LINK_ID", "clickTrack", NULL, "clickTrackId"},
    {"link_url", "clickTrack", NULL, "url"},
    {"ACCOUNT_ID", "account", NULL, "accountId"},
    {"account_login", "account", NULL, "login"},
};

/* Names match ignoring case, as libmicrohttpd matches the secret's. */
static const char *
param(const struct legacy_param *p, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(p[i].key, key) == 0)
            return p[i].value;
    return NULL;
}

static cJSON *
child(cJSON *parent, const char *name)
{
    cJSON *c = cJSON_GetObjectItemCaseSensitive(parent, name);

    if (c == NULL)
        c = cJSON_AddObjectToObject(parent, name);
    return c;
}

char *
legacy_event(const struct legacy_param *p, size_t n,
             const char *secret_param, double now)
{
    const char *action = param(p, n, "action");
    char type[128], when[40];
    time_t t = (time_t)now;
    struct tm tm;
    cJSON *ev, *cb;
    char *text;

    if (action == NULL || action[0] == '\0')
        return NULL;
    snprintf(type, sizeof(type), "callback_%s", action);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(action, types[i].action) == 0)
            snprintf(type, sizeof(type), "%s", types[i].type);
    ev = cJSON_CreateObject();
    cJSON_AddStringToObject(ev, "type", type);
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        const char *v = param(p, n, fields[i].param);
        cJSON *o;

        if (v == NULL)
            continue;
        o = child(ev, fields[i].object);
        if (fields[i].sub != NULL)
            o = child(o, fields[i].sub);
        cJSON_AddStringToObject(o, fields[i].name, v);
    }
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S+00:00", &tm);
    cJSON_AddStringToObject(child(ev, "event"), "occurredAt", when);
    cb = cJSON_AddObjectToObject(ev, "callback");
    for (size_t i = 0; i < n; i++)
        if (strcasecmp(p[i].key, secret_param) != 0)
            cJSON_AddStringToObject(cb, p[i].key, p[i].value);
    text = cJSON_PrintUnformatted(ev);
    cJSON_Delete(ev);
    return text;
}
