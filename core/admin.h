/* admin.h - the plain-HTTP listener for health checks and metrics. */
#ifndef GRWHD_ADMIN_H
#define GRWHD_ADMIN_H

#include "util.h"

struct intake;
struct server;

struct admin_conf {
    const char *listen;         /* "ADDR:PORT" */
    const char *spool;          /* path, read for the dead-letter gauge */
    struct intake *intake;
    struct server **server;     /* may point at NULL until it starts */
};

struct admin;

/*
 * GET /healthz: 200 while the process runs.  GET /readyz: 200 when the
 * spool takes writes and the script is loaded, else 503 with the reason.
 * GET /metrics: Prometheus text.  Anything else: 404.
 */
struct admin *admin_start(const struct admin_conf *conf, struct gerr *err);
void admin_stop(struct admin *a);

#endif
