/* spoolcmd.c - `grwhd spool`: look into a spool and act on dead events. */
#include "spoolcmd.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cJSON.h>

#include "spool.h"

static void
iso_time(double t, char *out, size_t cap)
{
    time_t s = (time_t)t;
    struct tm tm;

    gmtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int
stats(struct spool *s)
{
    struct spool_stats st;

    if (spool_stats(s, &st) != 0)
        return -1;
    printf("pending   %lld\nscheduled %lld\ndead      %lld\ndone      %lld\n",
           (long long)st.pending, (long long)st.scheduled,
           (long long)st.dead, (long long)st.done);
    if (st.oldest > 0)
        printf("oldest    %.0f s\n", util_now() - st.oldest);
    else
        printf("oldest    -\n");
    return 0;
}

/* The first line of an error: tracebacks stay out of the listing. */
static void
first_line(const char *s, char *out, size_t cap)
{
    size_t n = strcspn(s ? s : "", "\n");

    if (n >= cap)
        n = cap - 1;
    memcpy(out, s ? s : "", n);
    out[n] = '\0';
}

static int
print_dead(void *arg, struct spool_event *ev)
{
    char when[32], err[200];

    (void)arg;
    iso_time(ev->received_at, when, sizeof(when));
    first_line(ev->last_error, err, sizeof(err));
    printf("%-10lld %-32s %-12s %3d  %s  %s\n", (long long)ev->id, ev->type,
           ev->contact[0] ? ev->contact : "-", ev->attempts, when, err);
    spool_event_free(ev);
    return 0;
}

static int
add_dead(void *arg, struct spool_event *ev)
{
    cJSON *o = cJSON_CreateObject();

    cJSON_AddNumberToObject(o, "id", (double)ev->id);
    cJSON_AddStringToObject(o, "type", ev->type);
    cJSON_AddStringToObject(o, "contact_id", ev->contact);
    cJSON_AddNumberToObject(o, "attempts", ev->attempts);
    cJSON_AddStringToObject(o, "last_error",
                            ev->last_error ? ev->last_error : "");
    cJSON_AddNumberToObject(o, "received_at", ev->received_at);
    if (ev->webhook_id)
        cJSON_AddStringToObject(o, "webhook_id", ev->webhook_id);
    cJSON_AddItemToArray(arg, o);
    spool_event_free(ev);
    return 0;
}

static int
dead(struct spool *s, bool json)
{
    if (json) {
        cJSON *all = cJSON_CreateArray();
        char *text;
        int rc = spool_each_dead(s, add_dead, all);

        text = cJSON_Print(all);
        if (rc >= 0 && text != NULL)
            printf("%s\n", text);
        free(text);
        cJSON_Delete(all);
        return rc < 0 ? -1 : 0;
    }
    printf("%-10s %-32s %-12s %3s  %-20s  %s\n", "id", "type", "contact",
           "try", "received", "last error");
    return spool_each_dead(s, print_dead, NULL) < 0 ? -1 : 0;
}

static int
cmp_id(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/* Sorts ids and drops repeats; returns how many are left. */
static size_t
distinct_ids(int64_t *ids, size_t n)
{
    size_t k = 0;

    qsort(ids, n, sizeof(*ids), cmp_id);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || ids[i] != ids[k - 1])
            ids[k++] = ids[i];
    return k;
}

static int
retry(struct spool *s, const struct config *c)
{
    int64_t *ids = NULL, n;
    size_t nids = (size_t)(c->nargs - 1);

    if (c->all == (nids > 0)) {
        fprintf(stderr, "grwhd: spool retry takes event ids or --all\n");
        return 2;
    }
    if (!c->all) {
        ids = xcalloc(nids, sizeof(*ids));
        for (size_t i = 0; i < nids; i++) {
            const char *a = c->args[i + 1];
            char *end;

            errno = 0;
            ids[i] = strtoll(a, &end, 10);
            if (errno != 0 || *end != '\0' || end == a || ids[i] <= 0) {
                fprintf(stderr, "grwhd: not an event id: '%s'\n", a);
                free(ids);
                return 2;
            }
        }
        /* An id given twice is one event: it is dead only once. */
        nids = distinct_ids(ids, nids);
    }
    n = spool_retry(s, ids, nids);
    free(ids);
    if (n < 0)
        return -1;
    printf("re-queued %lld dead event%s\n", (long long)n, n == 1 ? "" : "s");
    if (!c->all && (size_t)n < nids) {
        size_t miss = nids - (size_t)n;

        fprintf(stderr, "grwhd: %zu of the ids given %s not a dead event "
                        "(see grwhd spool dead)\n", miss,
                miss == 1 ? "is" : "are");
        return 1;
    }
    return 0;
}

int
spoolcmd_run(const struct config *c)
{
    struct gerr err;
    struct spool *s;
    const char *what = c->nargs > 0 ? c->args[0] : NULL;
    int rc;

    if (what == NULL) {
        fprintf(stderr, "grwhd: spool needs stats, dead, retry or "
                        "purge-dead\n");
        return 2;
    }
    if (strcmp(what, "stats") != 0 && strcmp(what, "dead") != 0 &&
        strcmp(what, "retry") != 0 && strcmp(what, "purge-dead") != 0) {
        fprintf(stderr, "grwhd: unknown spool command '%s'\n", what);
        return 2;
    }
    if (strcmp(what, "retry") != 0 && c->nargs > 1) {
        fprintf(stderr, "grwhd: unexpected argument '%s'\n", c->args[1]);
        return 2;
    }
    if (strcmp(what, "purge-dead") == 0 && !c->yes) {
        fprintf(stderr, "grwhd: purge-dead deletes every dead event for "
                        "good; add --yes to do it\n");
        return 2;
    }
    s = spool_open_admin(c->spool, &err);
    if (s == NULL) {
        fprintf(stderr, "grwhd: %s\n", err.msg);
        return 1;
    }
    /* -1: SQLite failed (said below); other values are exit statuses. */
    if (strcmp(what, "stats") == 0) {
        rc = stats(s);
    } else if (strcmp(what, "dead") == 0) {
        rc = dead(s, c->json);
    } else if (strcmp(what, "retry") == 0) {
        rc = retry(s, c);
    } else {
        int64_t n = spool_purge_dead(s);
        rc = n < 0 ? -1 : 0;
        if (n >= 0)
            printf("deleted %lld dead event%s\n", (long long)n,
                   n == 1 ? "" : "s");
    }
    if (rc < 0) {
        fprintf(stderr, "grwhd: %s: %s\n", c->spool, spool_errmsg(s));
        rc = 1;
    }
    spool_close(s);
    return rc;
}
