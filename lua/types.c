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

struct script_names {
    char **v;           /* "name" or "name\0kind" for a non-function */
    size_t n;
    bool has_default, has_function;
};

static void
collect(void *arg, const char *name, const char *other)
{
    struct script_names *ns = arg;
    size_t len = strlen(name);
    char *e;

    if (other == NULL) {
        ns->has_function = true;
        if (strcmp(name, "default") == 0) {
            ns->has_default = true;
            return;
        }
    }
    e = xmalloc(len + 1 + (other ? strlen(other) : 0) + 1);
    memcpy(e, name, len + 1);
    if (other != NULL)
        strcpy(e + len + 1, other);
    else
        e[len + 1] = '\0';
    ns->v = xrealloc(ns->v, (ns->n + 1) * sizeof(*ns->v));
    ns->v[ns->n++] = e;
}

static int
cmp_entry(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void
types_check_script(struct lrt *rt, types_warn_fn *warn, void *arg)
{
    struct script_names ns = {0};
    char msg[400];

    lrt_types(rt, collect, &ns);
    if (ns.n > 0)
        qsort(ns.v, ns.n, sizeof(*ns.v), cmp_entry);
    for (size_t i = 0; i < ns.n; i++) {
        const char *name = ns.v[i], *other = name + strlen(name) + 1;
        const char *hint = types_suggest(name);
        bool is_default = strcmp(name, "default") == 0;

        if (*other != '\0') {
            /* Only names meant as handlers: a table may hold other data. */
            if (is_default || types_is_known(name) || hint != NULL) {
                snprintf(msg, sizeof(msg),
                         "'%s' is a %s, not a function: its events %s", name,
                         other, is_default ? "would be skipped"
                                           : "go to default");
                warn(arg, true, msg);
            }
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
    if (!ns.has_function)
        warn(arg, true, "no handler and no default: every event would be "
                        "skipped");
    else if (!ns.has_default)
        warn(arg, false, "no default handler: events of other types are "
                         "stored and skipped");
    for (size_t i = 0; i < ns.n; i++)
        free(ns.v[i]);
    free(ns.v);
}
