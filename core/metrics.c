/* metrics.c - counters for /metrics (Prometheus text format). */
#include "metrics.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../lua/types.h"
#include "util.h"

/* Known types, then callbacks, then the rest. */
#define TYPE_CALLBACK GRWHD_TYPES_KNOWN
#define TYPE_OTHER (GRWHD_TYPES_KNOWN + 1)
#define NTYPES (GRWHD_TYPES_KNOWN + 2)

static const unsigned codes[] = {200, 400, 403, 404, 405, 413, 503};
#define NCODES (sizeof(codes) / sizeof(codes[0]))

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                 0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                 5,      10,    30};
#define NBUCKETS (sizeof(buckets) / sizeof(buckets[0]))

struct histogram {
    atomic_uint_fast64_t count[NBUCKETS + 1];  /* last: +Inf */
    atomic_uint_fast64_t sum_us;
};

static atomic_uint_fast64_t requests[NCODES + 1];  /* last: other codes */
static atomic_uint_fast64_t received[NTYPES];
static atomic_uint_fast64_t handled[NTYPES][3];
static atomic_uint_fast64_t duplicates;
static atomic_uint_fast64_t script_reloads[2], tls_reloads[2];
static struct histogram ack, handler;

int
metrics_type_index(const char *type)
{
    if (type == NULL)
        return TYPE_OTHER;
    for (int i = 0; types_known[i] != NULL && i < TYPE_CALLBACK; i++)
        if (strcmp(type, types_known[i]) == 0)
            return i;
    return strncmp(type, "callback_", 9) == 0 ? TYPE_CALLBACK : TYPE_OTHER;
}

static const char *
type_label(int i)
{
    if (i == TYPE_CALLBACK)
        return "callback";
    if (i == TYPE_OTHER)
        return "other";
    return types_known[i];
}

void
metrics_request(unsigned status)
{
    size_t i = 0;

    while (i < NCODES && codes[i] != status)
        i++;
    atomic_fetch_add(&requests[i], 1);
}

void
metrics_received(const char *type)
{
    atomic_fetch_add(&received[metrics_type_index(type)], 1);
}

void
metrics_duplicates(size_t n)
{
    if (n > 0)
        atomic_fetch_add(&duplicates, n);
}

void
metrics_handled(int type_index, enum metrics_result r)
{
    if (type_index < 0 || type_index >= NTYPES)
        type_index = TYPE_OTHER;
    atomic_fetch_add(&handled[type_index][r], 1);
}

static void
observe(struct histogram *h, double s)
{
    size_t i = 0;

    while (i < NBUCKETS && s > buckets[i])
        i++;
    atomic_fetch_add(&h->count[i], 1);
    atomic_fetch_add(&h->sum_us, (uint_fast64_t)(s > 0 ? s * 1e6 : 0));
}

void
metrics_ack_latency(double seconds)
{
    observe(&ack, seconds);
}

void
metrics_handler_latency(double seconds)
{
    observe(&handler, seconds);
}

void
metrics_script_reload(bool ok)
{
    atomic_fetch_add(&script_reloads[ok ? 0 : 1], 1);
}

void
metrics_tls_reload(bool ok)
{
    atomic_fetch_add(&tls_reloads[ok ? 0 : 1], 1);
}

struct out {
    char *buf;
    size_t len, cap;
};

static void __attribute__((format(printf, 2, 3)))
out_printf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len)
            break;
        o->cap *= 2;
        o->buf = xrealloc(o->buf, o->cap);
    }
    o->len += (size_t)n;
}

/* A reload counter: [0] counts successes, [1] failures. */
static void
render_reloads(struct out *o, const char *name, const char *help,
               atomic_uint_fast64_t n[2])
{
    out_printf(o, "# HELP %s %s, by result.\n# TYPE %s counter\n"
                  "%s{result=\"ok\"} %llu\n%s{result=\"error\"} %llu\n",
               name, help, name, name,
               (unsigned long long)atomic_load(&n[0]), name,
               (unsigned long long)atomic_load(&n[1]));
}

static void
render_histogram(struct out *o, const char *name, const char *help,
                 struct histogram *h)
{
    uint_fast64_t total = 0;

    out_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i <= NBUCKETS; i++) {
        total += atomic_load(&h->count[i]);
        if (i < NBUCKETS)
            out_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, buckets[i],
                       (unsigned long long)total);
        else
            out_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name,
                       (unsigned long long)total);
    }
    out_printf(o, "%s_sum %.6f\n%s_count %llu\n", name,
               (double)atomic_load(&h->sum_us) / 1e6, name,
               (unsigned long long)total);
}

char *
metrics_render(const struct metrics_gauges *g, size_t *len)
{
    static const char *const results[] = {"ok", "retry", "dead"};
    struct out o = {.buf = xmalloc(8192), .cap = 8192};

    o.buf[0] = '\0';
    out_printf(&o, "# HELP grwhd_requests_total Webhook requests answered, "
                   "by status code.\n# TYPE grwhd_requests_total counter\n");
    for (size_t i = 0; i <= NCODES; i++) {
        if (i < NCODES)
            out_printf(&o, "grwhd_requests_total{code=\"%u\"} %llu\n",
                       codes[i],
                       (unsigned long long)atomic_load(&requests[i]));
        else
            out_printf(&o, "grwhd_requests_total{code=\"other\"} %llu\n",
                       (unsigned long long)atomic_load(&requests[i]));
    }
    out_printf(&o, "# HELP grwhd_events_received_total Events stored, by "
                   "type.\n# TYPE grwhd_events_received_total counter\n");
    for (int t = 0; t < NTYPES; t++)
        out_printf(&o, "grwhd_events_received_total{type=\"%s\"} %llu\n",
                   type_label(t),
                   (unsigned long long)atomic_load(&received[t]));
    out_printf(&o, "# HELP grwhd_events_handled_total Handler attempts, by "
                   "type and result.\n"
                   "# TYPE grwhd_events_handled_total counter\n");
    for (int t = 0; t < NTYPES; t++)
        for (int r = 0; r < 3; r++)
            out_printf(&o,
                       "grwhd_events_handled_total{type=\"%s\",result=\"%s\"}"
                       " %llu\n", type_label(t), results[r],
                       (unsigned long long)atomic_load(&handled[t][r]));
    out_printf(&o, "# HELP grwhd_dedupe_hits_total Repeated deliveries "
                   "acknowledged but not stored again.\n"
                   "# TYPE grwhd_dedupe_hits_total counter\n"
                   "grwhd_dedupe_hits_total %llu\n",
               (unsigned long long)atomic_load(&duplicates));
    out_printf(&o, "# HELP grwhd_spool_backlog Events stored and not yet "
                   "done or dead.\n# TYPE grwhd_spool_backlog gauge\n"
                   "grwhd_spool_backlog %lld\n", (long long)g->backlog);
    if (g->dead >= 0)
        out_printf(&o, "# HELP grwhd_spool_dead Dead events in the spool.\n"
                       "# TYPE grwhd_spool_dead gauge\n"
                       "grwhd_spool_dead %lld\n", (long long)g->dead);
    out_printf(&o, "# HELP grwhd_open_connections Open webhook "
                   "connections.\n# TYPE grwhd_open_connections gauge\n"
                   "grwhd_open_connections %u\n", g->connections);
    if (g->tls_pairs > 0)
        out_printf(&o, "# HELP grwhd_tls_pairs TLS certificate pairs in "
                       "memory: the current one and replaced ones open "
                       "connections still use.\n"
                       "# TYPE grwhd_tls_pairs gauge\n"
                       "grwhd_tls_pairs %u\n", g->tls_pairs);
    render_histogram(&o, "grwhd_ack_latency_seconds",
                     "From a request's headers to its 200.", &ack);
    render_histogram(&o, "grwhd_handler_latency_seconds",
                     "Duration of one handler call.", &handler);
    render_reloads(&o, "grwhd_script_reloads_total", "Script reloads",
                   script_reloads);
    render_reloads(&o, "grwhd_tls_reloads_total", "TLS certificate reloads",
                   tls_reloads);
    *len = o.len;
    return o.buf;
}
