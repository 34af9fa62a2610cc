/* admin.c - the plain-HTTP listener for health checks and metrics. */
#include "admin.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "spool.h"
#include "tls.h"

struct admin {
    struct admin_conf conf;
    struct MHD_Daemon *mhd;
    struct spool *spool;        /* the polling thread's own connection */
};

static enum MHD_Result
send_text(struct MHD_Connection *c, unsigned status, const char *type,
          char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, body, mode);
    enum MHD_Result rc;

    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result
send_json(struct MHD_Connection *c, unsigned status, const char *body)
{
    return send_text(c, status, "application/json", (char *)body,
                     strlen(body), MHD_RESPMEM_MUST_COPY);
}

static int64_t
dead_count(struct admin *a)
{
    if (a->spool == NULL) {
        struct gerr err;

        a->spool = spool_open_admin(a->conf.spool, &err);
        if (a->spool == NULL)
            return -1;
    }
    return spool_count(a->spool, SPOOL_DEAD);
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
           const char *method, const char *version, const char *upload,
           size_t *upload_size, void **con_cls)
{
    struct admin *a = cls;

    (void)version;
    (void)upload;
    (void)upload_size;
    (void)con_cls;
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
        strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return send_json(c, MHD_HTTP_METHOD_NOT_ALLOWED,
                         "{\"status\":\"ERROR\",\"error\":\"use GET\"}");
    if (strcmp(url, "/healthz") == 0)
        return send_json(c, MHD_HTTP_OK, "{\"status\":\"OK\"}");
    if (strcmp(url, "/readyz") == 0) {
        if (!intake_healthy(a->conf.intake))
            return send_json(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                             "{\"status\":\"ERROR\",\"error\":\"the spool "
                             "cannot be written\"}");
        if (*a->conf.server == NULL)
            return send_json(c, MHD_HTTP_SERVICE_UNAVAILABLE,
                             "{\"status\":\"ERROR\",\"error\":\"not "
                             "listening yet\"}");
        return send_json(c, MHD_HTTP_OK, "{\"status\":\"OK\"}");
    }
    if (strcmp(url, "/metrics") == 0) {
        struct metrics_gauges g = {
            .backlog = intake_backlog(a->conf.intake),
            .dead = dead_count(a),
            .connections = server_connections(*a->conf.server),
            .tls_pairs = tls_pairs(),
        };
        size_t len;
        char *text = metrics_render(&g, &len);

        return send_text(c, MHD_HTTP_OK,
                         "text/plain; version=0.0.4; charset=utf-8", text,
                         len, MHD_RESPMEM_MUST_FREE);
    }
    return send_json(c, MHD_HTTP_NOT_FOUND,
                     "{\"status\":\"ERROR\",\"error\":\"not found\"}");
}

struct admin *
admin_start(const struct admin_conf *conf, struct gerr *err)
{
    struct admin *a = xcalloc(1, sizeof(*a));
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL;

    a->conf = *conf;
    if (server_parse_addr(conf->listen, &ss, err) != 0) {
        free(a);
        return NULL;
    }
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* One polling thread: the spool connection is only ever used there. */
    a->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, a,
                              MHD_OPTION_SOCK_ADDR, &ss,
                              MHD_OPTION_CONNECTION_LIMIT, 64u,
                              MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                              MHD_OPTION_END);
    if (a->mhd == NULL) {
        gerr_set(err, "cannot listen on %s for --admin", conf->listen);
        free(a);
        return NULL;
    }
    return a;
}

void
admin_stop(struct admin *a)
{
    if (a == NULL)
        return;
    MHD_stop_daemon(a->mhd);
    spool_close(a->spool);
    free(a);
}
