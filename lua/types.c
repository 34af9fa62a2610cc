/* types.c - the event types GetResponse is known to send. */
#include "types.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "../core/util.h"

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

struct collected {
    struct types_entry *v;
    size_t n;
};

static void
collect(void *arg, const char *name, const char *other)
{
    struct collected *c = arg;

    c->v = xrealloc(c->v, (c->n + 1) * sizeof(*c->v));
    c->v[c->n].name = xstrdup(name);
    c->v[c->n].kind = other;    /* Lua's type names are static */
    c->n++;
}

static int
cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct types_entry *)a)->name,
                  ((const struct types_entry *)b)->name);
}

size_t
types_entries(struct lrt *rt, struct types_entry **out)
{
    struct collected c = {0};

    lrt_types(rt, collect, &c);
    if (c.n > 0)
        qsort(c.v, c.n, sizeof(*c.v), cmp_entry);
    *out = c.v;
    return c.n;
}

void
types_entries_free(struct types_entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}

void
types_check_script(struct lrt *rt, types_warn_fn *warn, void *arg)
{
    struct types_entry *e;
    size_t n = types_entries(rt, &e);
    bool has_default = false, has_function = false;
    char msg[400];

    for (size_t i = 0; i < n; i++) {
        const char *name = e[i].name, *hint = types_suggest(name);
        bool is_default = strcmp(name, "default") == 0;

        if (e[i].kind != NULL) {
            /* Only names meant as handlers: a table may hold other data. */
            if (is_default || types_is_known(name) || hint != NULL) {
                snprintf(msg, sizeof(msg),
                         "'%s' is a %s, not a function: its events %s", name,
                         e[i].kind, is_default ? "would be skipped"
                                               : "go to default");
                warn(arg, true, msg);
            }
            continue;
        }
        has_function = true;
        if (is_default) {
            has_default = true;
        } else if (!types_is_known(name)) {
            if (hint != NULL)
                snprintf(msg, sizeof(msg),
                         "'%s' is not a GetResponse event type; did you "
                         "mean '%s'?", name, hint);
            else
                snprintf(msg, sizeof(msg),
                         "'%s' is not a known GetResponse event type; it "
                         "runs only if such events arrive", name);
            warn(arg, true, msg);
        }
    }
    if (!has_function)
        warn(arg, true, "no handler and no default: every event would be "
                        "skipped");
    else if (!has_default)
        warn(arg, false, "no default handler: events of other types are "
                         "stored and skipped");
    types_entries_free(e, n);
}
