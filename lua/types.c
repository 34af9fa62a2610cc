/* types.c - the event types GetResponse is known to send. */
#include "types.h"

#include <stdlib.h>
#include <string.h>

const char *const types_known[GRWHD_TYPES_KNOWN + 1] = {
    "contact_opened_message",
    "contact_clicked_message_link",
    "contact_clicked_sms_link",
    "contact_added",
    "contact_copied",
    "contact_moved",
    "contact_removed_link",
    "contact_removed_bounce",
    "contact_custom_field_changed",
    "contact_email_changed",
    "contact_rejected",
    "contacts_import_finished",
    "custom_reports_file_status_changed",
    NULL,
};

/* Words from the web interface's event names, which are not type names. */
static const struct {
    const char *word;
    const char *type;
} hints[] = {
    {"unsubscribe", "contact_removed_link"},
    {"subscribe", "contact_added"},
    {"bounce", "contact_removed_bounce"},
    {"open", "contact_opened_message"},
    {"sms", "contact_clicked_sms_link"},
    {"click", "contact_clicked_message_link"},
    {"import", "contacts_import_finished"},
    {"custom_field", "contact_custom_field_changed"},
    {"email", "contact_email_changed"},
    {"report", "custom_reports_file_status_changed"},
};

bool
types_is_known(const char *name)
{
    for (int i = 0; types_known[i]; i++)
        if (strcmp(name, types_known[i]) == 0)
            return true;
    return false;
}

/* Edit distance, on names short enough for a small table. */
static size_t
distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), row[64], prev, tmp;

    if (la >= 64 || lb >= 64)
        return (size_t)-1;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t best = prev + (a[i - 1] != b[j - 1]);

            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            tmp = row[j];
            row[j] = best;
            prev = tmp;
        }
    }
    return row[lb];
}

const char *
types_suggest(const char *name)
{
    const char *best = NULL;
    size_t best_d = (size_t)-1;

    for (size_t i = 0; i < sizeof(hints) / sizeof(hints[0]); i++)
        if (strstr(name, hints[i].word) != NULL)
            return hints[i].type;
    for (int i = 0; types_known[i]; i++) {
        size_t d = distance(name, types_known[i]);
        if (d < best_d) {
            best_d = d;
            best = types_known[i];
        }
    }
    /* A third of the name wrong is a different name, not a typo. */
    return best_d <= strlen(name) / 3 + 1 ? best : NULL;
}
