/* metrics.h - counters for /metrics (Prometheus text format). */
#ifndef GRWHD_METRICS_H
#define GRWHD_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * Type labels are bounded: the known types, "callback" for legacy
 * callbacks of other actions, and "other" for everything else, so a peer
 * cannot grow the metric set by inventing types.
 */
int metrics_type_index(const char *type);

enum metrics_result {
    METRICS_OK,
    METRICS_RETRY,
    METRICS_DEAD,
};

void metrics_request(unsigned status);
void metrics_received(const char *type);
void metrics_duplicates(size_t n);
void metrics_handled(int type_index, enum metrics_result r);
void metrics_ack_latency(double seconds);
void metrics_handler_latency(double seconds);
void metrics_script_reload(bool ok);
void metrics_tls_reload(bool ok);

/* Gauges read at render time. */
struct metrics_gauges {
    int64_t backlog;
    int64_t dead;           /* -1 when unknown */
    unsigned connections;
    unsigned tls_pairs;     /* 0 without TLS: not shown */
};

/* Appends the text exposition to a malloc'd buffer; returns it. */
char *metrics_render(const struct metrics_gauges *g, size_t *len);

#endif
