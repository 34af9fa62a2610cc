/* server.c - the webhook listener (libmicrohttpd, HTTPS with GnuTLS). */
#include "server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cJSON.h>
#include <microhttpd.h>

#include "batch.h"
#include "dedupe.h"
#include "legacy.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "tls.h"

/* GetResponse sends at most 100 events in one request. */
#define GRWHD_BATCH_NOMINAL 100
/* Ten times what GetResponse sends: more is not a delivery but a way to
 * make a small body cost much memory (each event has its own record). */
#define GRWHD_BATCH_MAX 1000
/* Delivery ids longer than this are not GetResponse's: not kept. */
#define GRWHD_ID_MAX 200
#define GRWHD_LOG_PATH_MAX 512
/* Query parameters a legacy callback may carry; it sends about a dozen. */
#define GRWHD_LEGACY_PARAMS 64
/* Suggested wait for a client told 503, in seconds. */
#define GRWHD_RETRY_AFTER "10"
/*
 * GetResponse gives up on an answer after 5 s and then retries; a request
 * still waiting for the spool this long after its headers is told 503
 * first, so the sender always hears something it will retry.
 */
#define GRWHD_ACK_BUDGET 4.0
#define GRWHD_WATCHDOG_TICK_US (50 * 1000)
/* How often, in watchdog ticks, connections are checked for slowness. */
#define GRWHD_SLOW_SCAN_TICKS 5
/* At shutdown, how long woken connections get to run before the stop. */
#define GRWHD_RESUME_WAIT 2.0

enum req_stage {
    REQ_NEW,
    REQ_WAITING,        /* suspended until the intake has stored the job */
    REQ_STORED,
    REQ_FAILED,
    REQ_LATE,           /* the budget ran out before the spool answered */
};

/*
 * One per open connection, to bound the time a request may take to
 * arrive: libmicrohttpd's own timeout counts only idle time, so a peer
 * sending one byte a second would hold its connection for ever.
 * since is when the deadline's clock started, in util_mono milliseconds:
 * the connection opened, the previous request was answered (both bound
 * the wait for a request line), or the request line came in (which
 * bounds the headers and body, however long the connection was idle
 * before); 0 while the request is in our hands or being answered.
 */
struct conn {
    struct conn *prev, *next;
    int fd;
    atomic_llong since;
    atomic_bool cut;        /* shut down for slowness */
    char remote[INET6_ADDRSTRLEN];
};

struct server {
    struct server_conf conf;
    /* Secrets are replaced on reload while requests read them. */
    pthread_rwlock_t auth_lock;
    struct auth auth;
    struct MHD_Daemon *mhd;
    struct MHD_Response *r_ok, *r_403, *r_404, *r_405, *r_413, *r_503;
    /* Requests suspended on the intake, oldest first; the watchdog
     * answers those past the budget. */
    pthread_mutex_t wait_mu;
    struct req *wait_head, *wait_tail;
    pthread_t watchdog;
    bool watchdog_started;
    atomic_bool stopping;
    /*
     * Shutdown: draining turns new requests away (503); active counts
     * requests begun and not ended, suspended those the intake holds or
     * that were woken and not yet run again.  libmicrohttpd must not be
     * stopped while a connection is suspended.
     */
    atomic_bool draining;
    atomic_int active, suspended;
    struct MHD_Response *r_draining;
    bool abandoned;         /* left running at shutdown, see server_stop */
    /* Open connections, for the slowness check. */
    pthread_mutex_t conn_mu;
    struct conn *conns;
};

struct req {
    struct server *srv;
    struct MHD_Connection *conn;
    struct conn *slot;      /* NULL if the connection was not registered */
    double t0;
    const char *method;
    char *body;
    size_t len, cap;
    size_t discarded;
    bool too_large;
    bool legacy;            /* a GET callback, not a webhook */
    unsigned status;
    size_t events;
    struct intake_job job;
    atomic_int stage;
    /* One reference for libmicrohttpd, one for the intake while it holds
     * the job: whichever lets go last frees the request. */
    atomic_int refs;
    struct req *wait_prev, *wait_next;
    atomic_bool is_suspended;   /* counted in srv->suspended */
    char *webhook_id, *request_id;
    char error[128];        /* why a 400 was answered, for the log */
    char remote[INET6_ADDRSTRLEN];
    char path[GRWHD_LOG_PATH_MAX];
};

static const char ok_body[] = "{\"status\":\"OK\"}";

static struct MHD_Response *
json_response(const char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, mode);

    if (r != NULL)
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                "application/json");
    return r;
}

static struct MHD_Response *
error_response(const char *error)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf),
                     "{\"status\":\"ERROR\",\"error\":\"%s\"}", error);

    return json_response(buf, (size_t)n, MHD_RESPMEM_MUST_COPY);
}

/* Writes msg as a JSON string body without quotes or control bytes. */
static void
json_text(char *out, size_t cap, const char *msg)
{
    size_t o = 0;

    for (; *msg && o + 1 < cap; msg++) {
        unsigned char c = (unsigned char)*msg;
        if (c == '"' || c == '\\' || c < 0x20)
            c = '\'';
        out[o++] = (char)c;
    }
    out[o] = '\0';
}

static long long
mono_ms(void)
{
    return (long long)(util_mono() * 1000.0) + 1;   /* never 0 */
}

/* The request has arrived, or is answered: no longer subject to the
 * arrival deadline. */
static void
arrived(struct req *r)
{
    if (r->slot != NULL)
        atomic_store(&r->slot->since, 0);
}

static enum MHD_Result
reply(struct req *r, unsigned status, struct MHD_Response *resp)
{
    arrived(r);
    r->status = status;
    return MHD_queue_response(r->conn, status, resp);
}

/* A shared error response, with the reason for the access line only. */
static enum MHD_Result
refuse(struct req *r, unsigned status, struct MHD_Response *resp,
       const char *why)
{
    if (r->error[0] == '\0')
        snprintf(r->error, sizeof(r->error), "%s", why);
    return reply(r, status, resp);
}

static enum MHD_Result
reply_error(struct req *r, unsigned status, const char *msg)
{
    char text[300];
    struct MHD_Response *resp;
    enum MHD_Result rc;

    json_text(text, sizeof(text), msg);
    snprintf(r->error, sizeof(r->error), "%s", msg);
    resp = error_response(text);
    if (resp == NULL)
        return MHD_NO;
    rc = reply(r, status, resp);
    MHD_destroy_response(resp);
    return rc;
}

/*
 * Whether a query parameter's name may be logged.  A secret typed into
 * the URL without its name ("?S") or with a mangled "=" ("?secret%3DS")
 * arrives as a name: only plain names that carry a value are shown.
 */
static bool
plain_name(const char *key, const char *value)
{
    size_t n = 0;

    if (value == NULL)
        return false;
    for (; key[n] != '\0'; n++) {
        char c = key[n];

        if (n == 64 || !((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                         (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                         c == '.'))
            return false;
    }
    return n > 0;
}

/* Whether s is one of the secrets (a name may be one, typed wrong). */
static bool
is_secret(struct server *srv, const char *s)
{
    bool yes;

    pthread_rwlock_rdlock(&srv->auth_lock);
    yes = !auth_open(&srv->auth) && auth_check(&srv->auth, s, strlen(s));
    pthread_rwlock_unlock(&srv->auth_lock);
    return yes;
}

static enum MHD_Result
add_query_key(void *cls, enum MHD_ValueKind kind, const char *key,
              const char *value)
{
    struct req *r = cls;
    size_t n = strlen(r->path);
    bool action, show;

    (void)kind;
    /* Values are not logged (one is the secret, another may be an e-mail)
     * but for a legacy callback's action, which says what it is, when it
     * is a plain word. */
    action = value != NULL && strcasecmp(key, "action") == 0 &&
             strcmp(r->method, MHD_HTTP_METHOD_GET) == 0 &&
             plain_name(value, "") && !is_secret(r->srv, value);
    /* The secret's own parameter, on every request, needs no hashing. */
    show = plain_name(key, value) &&
           (strcasecmp(key, r->srv->conf.secret_param) == 0 ||
            !is_secret(r->srv, key));
    snprintf(r->path + n, sizeof(r->path) - n, "%s%s=%s",
             strchr(r->path, '?') ? "&" : "?", show ? key : "REDACTED",
             action ? value : "REDACTED");
    return MHD_YES;
}

/*
 * The request target as logged: an absolute URL ("http://user:pw@host/p")
 * loses its scheme and authority, which may hold a password; any other
 * target that is not a path is not shown.
 */
static void
log_path(char *out, size_t cap, const char *url)
{
    const char *s = strstr(url, "://");

    if (url[0] == '/') {
        snprintf(out, cap, "%s", url);
    } else if (s != NULL && s > url &&
               strspn(url, "abcdefghijklmnopqrstuvwxyz"
                           "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-.") ==
                   (size_t)(s - url)) {
        const char *p = s + 3 + strcspn(s + 3, "/?#");

        snprintf(out, cap, "%s%s", *p == '/' ? "" : "/", p);
    } else {
        snprintf(out, cap, "REDACTED");
    }
}

/*
 * A URL mistyped with the secret in its path (".../secret=S") would put
 * the secret in the log: what follows "NAME=" there is redacted too.
 */
static void
redact_path(char *path, const char *param)
{
    size_t pn = strlen(param);
    char *p = path;

    /* Query names match ignoring case, so the path is searched so too. */
    while ((p = strcasestr(p, param)) != NULL) {
        char *v = p + pn, *end;

        if (*v != '=') {
            p = v;
            continue;
        }
        v++;
        end = v + strcspn(v, "/&;#");
        if (end == v) {
            p = v;
            continue;
        }
        if ((size_t)(v - path) + 8 + strlen(end) < GRWHD_LOG_PATH_MAX) {
            memmove(v + 8, end, strlen(end) + 1);
            memcpy(v, "REDACTED", 8);
            p = v + 8;
        } else {
            /* No room to keep the rest: it is cut, never shown. */
            snprintf(v, GRWHD_LOG_PATH_MAX - (size_t)(v - path), "REDACTED");
            return;
        }
    }
}

static char *
header_id(struct MHD_Connection *c, const char *name)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);

    if (v == NULL || v[0] == '\0' || strlen(v) > GRWHD_ID_MAX)
        return NULL;
    return xstrdup(v);
}

static void
peer_addr(struct MHD_Connection *conn, char out[INET6_ADDRSTRLEN])
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    out[0] = '\0';
    if (sa != NULL && sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out,
                  INET6_ADDRSTRLEN);
    else if (sa != NULL && sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr,
                  out, INET6_ADDRSTRLEN);
}

static struct req *
req_new(struct server *srv, struct MHD_Connection *conn, const char *url,
        const char *method)
{
    struct req *r = xcalloc(1, sizeof(*r));
    const union MHD_ConnectionInfo *ci;

    r->srv = srv;
    r->conn = conn;
    r->t0 = util_mono();
    atomic_fetch_add(&srv->active, 1);
    r->method = method;
    atomic_init(&r->stage, REQ_NEW);
    atomic_init(&r->refs, 1);
    ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci != NULL)
        r->slot = ci->socket_context;
    log_path(r->path, sizeof(r->path), url);
    redact_path(r->path, srv->conf.secret_param);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_query_key, r);
    peer_addr(conn, r->remote);
    return r;
}

static void
req_unref(struct req *r)
{
    if (atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    /* The intake clears the slots of the events it took. */
    for (size_t i = 0; r->job.ev != NULL && i < r->job.n; i++)
        spool_event_free(r->job.ev[i]);
    free(r->job.ev);
    free(r->body);
    free(r->webhook_id);
    free(r->request_id);
    free(r);
}

struct params {
    struct server *srv;
    struct legacy_param p[GRWHD_LEGACY_PARAMS];
    size_t n;
};

static enum MHD_Result
add_param(void *cls, enum MHD_ValueKind kind, const char *key,
          const char *value)
{
    struct params *ps = cls;

    (void)kind;
    if (ps->n == GRWHD_LEGACY_PARAMS)
        return MHD_NO;
    /* A secret typed as a name is dropped like the secret's value. */
    if (is_secret(ps->srv, key))
        return MHD_YES;
    ps->p[ps->n].key = key;
    ps->p[ps->n].value = value ? value : "";
    ps->n++;
    return MHD_YES;
}

/*
 * A legacy callback carries everything in its query string: the event
 * built from it becomes the request's body, and the rest of the request
 * goes the way of a POSTed object.
 */
static enum MHD_Result
on_legacy(struct req *r)
{
    struct params ps = {.srv = r->srv, .n = 0};
    char *text;

    MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, add_param, &ps);
    text = legacy_event(ps.p, ps.n, r->srv->conf.secret_param, util_now());
    if (text == NULL)
        return reply_error(r, MHD_HTTP_BAD_REQUEST, "empty action");
    r->len = strlen(text);
    r->body = xstrndup(text, r->len);
    cJSON_free(text);
    return MHD_YES;
}

/* First call: headers are in, no body byte has been read. */
static enum MHD_Result
on_headers(struct req *r, const char *url, const char *method)
{
    struct server *srv = r->srv;
    const char *given = NULL, *cl;
    size_t given_len = 0;
    bool legacy, let_in;

    if (atomic_load(&srv->draining))
        return refuse(r, MHD_HTTP_SERVICE_UNAVAILABLE, srv->r_draining,
                      "shutting down");
    if (srv->conf.path != NULL && strcmp(url, srv->conf.path) != 0)
        return refuse(r, MHD_HTTP_NOT_FOUND, srv->r_404,
                      "not the --path served");
    legacy = strcmp(method, MHD_HTTP_METHOD_GET) == 0 &&
             MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND,
                                         "action") != NULL;
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0 && !legacy)
        return refuse(r, MHD_HTTP_METHOD_NOT_ALLOWED, srv->r_405,
                      "not a POST, nor a GET with action");
    if (MHD_lookup_connection_value_n(r->conn, MHD_GET_ARGUMENT_KIND,
                                      srv->conf.secret_param,
                                      strlen(srv->conf.secret_param),
                                      &given, &given_len) != MHD_YES)
        given = NULL;
    pthread_rwlock_rdlock(&srv->auth_lock);
    let_in = auth_open(&srv->auth) ||
             (given != NULL && auth_check(&srv->auth, given, given_len));
    pthread_rwlock_unlock(&srv->auth_lock);
    if (!let_in)
        return refuse(r, MHD_HTTP_FORBIDDEN, srv->r_403,
                      given == NULL ? "no secret parameter"
                                    : "wrong secret");
    cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND,
                                     MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl != NULL && strtoull(cl, NULL, 10) > srv->conf.max_body)
        return refuse(r, MHD_HTTP_CONTENT_TOO_LARGE, srv->r_413,
                      "Content-Length over --max-body");
    r->webhook_id = header_id(r->conn, "X-Webhook-ID");
    r->request_id = header_id(r->conn, "X-Request-ID");
    r->legacy = legacy;
    if (legacy)
        return on_legacy(r);
    return MHD_YES;
}

static enum MHD_Result
on_body(struct req *r, const char *data, size_t n)
{
    size_t max = r->srv->conf.max_body;

    if (r->too_large || r->len + n > max) {
        /* Read to the end, so the client can read the 413; the time this
         * takes is bounded by the arrival deadline. */
        r->too_large = true;
        r->discarded += n;
        return MHD_YES;
    }
    if (r->len + n > r->cap) {
        size_t cap = r->cap ? r->cap : 4096;
        while (cap < r->len + n)
            cap *= 2;
        if (cap > max)
            cap = max;
        r->body = xrealloc(r->body, cap);
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    return MHD_YES;
}

static void
wait_unlink(struct server *srv, struct req *r)
{
    if (r->wait_prev)
        r->wait_prev->wait_next = r->wait_next;
    else
        srv->wait_head = r->wait_next;
    if (r->wait_next)
        r->wait_next->wait_prev = r->wait_prev;
    else
        srv->wait_tail = r->wait_prev;
    r->wait_prev = r->wait_next = NULL;
}

/*
 * Moves r out of REQ_WAITING and wakes its connection, unless the watchdog
 * (or the intake) already did: a connection is resumed exactly once.
 */
static void
wake(struct server *srv, struct req *r, int stage)
{
    int expect = REQ_WAITING;

    pthread_mutex_lock(&srv->wait_mu);
    if (atomic_compare_exchange_strong(&r->stage, &expect, stage)) {
        wait_unlink(srv, r);
        MHD_resume_connection(r->conn);
    }
    pthread_mutex_unlock(&srv->wait_mu);
}

/* With wait_mu held: r stops waiting for the spool and will hear 503. */
static void
answer_late(struct server *srv, struct req *r)
{
    int expect = REQ_WAITING;

    wait_unlink(srv, r);
    if (atomic_compare_exchange_strong(&r->stage, &expect, REQ_LATE))
        MHD_resume_connection(r->conn);
}

/* Runs on the intake thread: the events are stored (or not). */
static void
on_stored(struct intake_job *job)
{
    struct req *r = job->arg;

    wake(r->srv, r, job->result == INTAKE_STORED ? REQ_STORED : REQ_FAILED);
    req_unref(r);
}

/* A request line has come in: the request's own deadline starts. */
static void *
on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct conn *c = ci ? ci->socket_context : NULL;

    (void)cls;
    (void)uri;
    if (c != NULL)
        atomic_store(&c->since, mono_ms());
    return NULL;
}

static void
on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
              enum MHD_ConnectionNotificationCode code)
{
    struct server *srv = cls;
    struct conn *c = *socket_context;

    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);

        if (ci == NULL)
            return;
        if (srv->conf.tls_cert != NULL) {
            const union MHD_ConnectionInfo *ti = MHD_get_connection_info(
                conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);

            tls_check_transport(ti ? ti->tls_session : NULL, ci->connect_fd);
        }
        c = xcalloc(1, sizeof(*c));
        c->fd = ci->connect_fd;
        atomic_init(&c->since, mono_ms());
        atomic_init(&c->cut, false);
        peer_addr(conn, c->remote);
        pthread_mutex_lock(&srv->conn_mu);
        c->next = srv->conns;
        if (srv->conns)
            srv->conns->prev = c;
        srv->conns = c;
        pthread_mutex_unlock(&srv->conn_mu);
        *socket_context = c;
        return;
    }
    if (c == NULL)
        return;
    /* libmicrohttpd closes the socket only after this returns, so the
     * watchdog never shuts down a descriptor that was reused. */
    pthread_mutex_lock(&srv->conn_mu);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    pthread_mutex_unlock(&srv->conn_mu);
    if (srv->conf.tls_cert != NULL)
        tls_release(c->fd);
    free(c);
    *socket_context = NULL;
}

/*
 * Shuts down connections whose request has not arrived in full within
 * --conn-timeout: the connection's thread then sees the socket closed and
 * lets the connection go the usual way.
 */
static void
cut_slow(struct server *srv)
{
    /* A second of grace: an idle keep-alive connection is libmicrohttpd's
     * to close, at --conn-timeout after its last byte. */
    long long late =
        mono_ms() - ((long long)srv->conf.conn_timeout + 1) * 1000;

    pthread_mutex_lock(&srv->conn_mu);
    for (struct conn *c = srv->conns; c; c = c->next) {
        long long since = atomic_load(&c->since);

        if (since == 0 || since > late || atomic_load(&c->cut))
            continue;
        atomic_store(&c->cut, true);
        shutdown(c->fd, SHUT_RDWR);
        log_msg_str(LOG_INFO, "closed a connection too slow to send its "
                    "request", "remote", c->remote);
    }
    pthread_mutex_unlock(&srv->conn_mu);
}

static void *
watchdog_main(void *arg)
{
    struct server *srv = arg;
    unsigned tick = 0;

    while (!atomic_load(&srv->stopping)) {
        double late = util_mono() - GRWHD_ACK_BUDGET;

        if (++tick % GRWHD_SLOW_SCAN_TICKS == 0)
            cut_slow(srv);

        pthread_mutex_lock(&srv->wait_mu);
        while (srv->wait_head != NULL && srv->wait_head->t0 < late)
            answer_late(srv, srv->wait_head);
        pthread_mutex_unlock(&srv->wait_mu);
        usleep(GRWHD_WATCHDOG_TICK_US);
    }
    return NULL;
}

static struct spool_event *
event_from(const struct req *r, const struct batch_event *bev, size_t index,
           size_t count, double now)
{
    const char *text[SPOOL_TEXTS] = {
        [SPOOL_TYPE] = bev->type,
        [SPOOL_CONTACT] = bev->contact,
        [SPOOL_WEBHOOK_ID] = r->webhook_id,
        [SPOOL_REQUEST_ID] = r->request_id,
        [SPOOL_REMOTE_ADDR] = r->remote,
        [SPOOL_JSON] = bev->json,
    };
    size_t len[SPOOL_TEXTS];
    struct spool_event *ev;

    for (int i = 0; i < SPOOL_TEXTS; i++)
        len[i] = text[i] != NULL && i != SPOOL_JSON ? strlen(text[i]) : 0;
    len[SPOOL_JSON] = bev->len;
    ev = spool_event_new(text, len);
    ev->received_at = now;
    ev->batch_index = (int)index;
    ev->batch_size = (int)count;
    /*
     * A legacy callback is not retried by GetResponse, and two genuine
     * ones can be identical (the time they carry is whole seconds): only
     * a delivery id makes it a repeat.
     */
    if (r->srv->conf.dedupe && (!r->legacy || r->webhook_id != NULL))
        ev->has_key = dedupe_key(r->webhook_id, (int)index, ev->json,
                                 ev->len, ev->key) == 0;
    return ev;
}

/* r's connection runs again (or is gone): no longer suspended. */
static void
unsuspend(struct req *r)
{
    if (atomic_exchange(&r->is_suspended, false))
        atomic_fetch_sub(&r->srv->suspended, 1);
}

/* The body is complete: parse, store, then answer. */
static enum MHD_Result
on_complete(struct req *r)
{
    struct server *srv = r->srv;
    struct batch b;
    struct gerr err;
    double now;
    int stage = atomic_load(&r->stage);

    if (stage != REQ_WAITING)
        unsuspend(r);
    switch (stage) {
    case REQ_STORED:
        metrics_ack_latency(util_mono() - r->t0);
        return reply(r, MHD_HTTP_OK, srv->r_ok);
    case REQ_FAILED:
        return refuse(r, MHD_HTTP_SERVICE_UNAVAILABLE, srv->r_503,
                      "the spool did not take the events");
    case REQ_LATE:
        log_msg_str(LOG_WARN, "spool too slow, answering 503 within the "
                    "budget", "remote", r->remote);
        return refuse(r, MHD_HTTP_SERVICE_UNAVAILABLE, srv->r_503,
                      "the spool was too slow");
    case REQ_WAITING:
        return MHD_YES;     /* a spurious wake-up; stay suspended */
    default:
        break;
    }
    arrived(r);
    if (r->too_large)
        return refuse(r, MHD_HTTP_CONTENT_TOO_LARGE, srv->r_413,
                      "body over --max-body");
    if (batch_parse(&b, r->body, r->len, &err) != 0) {
        bool too_many = b.too_many;

        r->body = NULL;
        batch_free(&b);
        return reply_error(r, too_many ? MHD_HTTP_CONTENT_TOO_LARGE
                                       : MHD_HTTP_BAD_REQUEST, err.msg);
    }
    r->body = NULL;     /* now b's */
    r->events = b.n;
    if (b.n == 0) {
        batch_free(&b);
        return reply(r, MHD_HTTP_OK, srv->r_ok);
    }
    if (b.n > GRWHD_BATCH_NOMINAL) {
        struct log_line l;
        if (log_begin(&l, LOG_WARN, "batch larger than GetResponse sends")) {
            log_int(&l, "events", (long long)b.n);
            log_str(&l, "remote", r->remote);
            log_end(&l);
        }
    }
    if (b.repaired)
        log_msg_str(LOG_WARN, "invalid UTF-8 replaced by U+FFFD", "remote",
                    r->remote);
    now = util_now();
    r->job.ev = xcalloc(b.n, sizeof(*r->job.ev));
    r->job.n = b.n;
    for (size_t i = 0; i < b.n; i++)
        r->job.ev[i] = event_from(r, &b.ev[i], i, b.n, now);
    batch_free(&b);
    r->job.done = on_stored;
    r->job.arg = r;

    /* Suspend first: the intake may finish before submit returns. */
    pthread_mutex_lock(&srv->wait_mu);
    atomic_store(&r->stage, REQ_WAITING);
    atomic_store(&r->is_suspended, true);
    atomic_fetch_add(&srv->suspended, 1);
    r->wait_prev = srv->wait_tail;
    if (srv->wait_tail)
        srv->wait_tail->wait_next = r;
    else
        srv->wait_head = r;
    srv->wait_tail = r;
    MHD_suspend_connection(r->conn);
    pthread_mutex_unlock(&srv->wait_mu);
    atomic_fetch_add(&r->refs, 1);      /* the intake's */
    if (intake_submit(srv->conf.intake, &r->job) != 0) {
        log_msg_str(LOG_WARN, "spool backlog full, answering 503", "remote",
                    r->remote);
        snprintf(r->error, sizeof(r->error), "backlog over --max-backlog");
        atomic_fetch_sub(&r->refs, 1);
        wake(srv, r, REQ_FAILED);
    }
    return MHD_YES;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *conn, const char *url,
           const char *method, const char *version, const char *upload,
           size_t *upload_size, void **con_cls)
{
    struct req *r = *con_cls;

    (void)version;
    if (r == NULL) {
        r = req_new(cls, conn, url, method);
        *con_cls = r;
        return on_headers(r, url, method);
    }
    if (*upload_size > 0) {
        enum MHD_Result rc = on_body(r, upload, *upload_size);
        *upload_size = 0;
        return rc;
    }
    return on_complete(r);
}

static void
on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    struct server *srv = cls;
    struct req *r = *con_cls;
    struct log_line l;

    (void)conn;
    if (r == NULL)
        return;
    unsuspend(r);
    atomic_fetch_sub(&srv->active, 1);
    if (r->status != 0)
        metrics_request(r->status);
    if (log_begin(&l, r->status >= 500 || r->status == 0 ? LOG_WARN
                                                         : LOG_INFO,
                  "request")) {
        log_str(&l, "method", r->method);
        log_str(&l, "path", r->path);
        log_int(&l, "status", r->status);
        log_int(&l, "events", (long long)r->events);
        log_int(&l, "bytes", (long long)(r->len + r->discarded));
        log_num(&l, "ms", (util_mono() - r->t0) * 1000.0);
        log_str(&l, "remote", r->remote);
        if (r->webhook_id)
            log_str(&l, "webhook_id", r->webhook_id);
        if (r->status == MHD_HTTP_OK && r->job.duplicates > 0)
            log_int(&l, "duplicates", (long long)r->job.duplicates);
        if (r->error[0] == '\0' && r->slot != NULL &&
            atomic_load(&r->slot->cut))
            snprintf(r->error, sizeof(r->error),
                     "request not in full within --conn-timeout");
        else if (r->error[0] == '\0' &&
                 toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED)
            snprintf(r->error, sizeof(r->error),
                     "the client sent nothing for --conn-timeout");
        if (r->error[0] != '\0')
            log_str(&l, "error", r->error);
        /*
         * XXX(half-close): libmicrohttpd reports a client that shut down
         * its sending side after the body as an abort, so such a client
         * gets no answer even when its events were stored.
         */
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            log_str(&l, "aborted",
                    toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? "timeout"
                    : toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT  ? "client"
                                                                  : "error");
        log_end(&l);
    }
    /* A next request on this connection starts its own deadline. */
    if (r->slot != NULL)
        atomic_store(&r->slot->since, mono_ms());
    req_unref(r);
    *con_cls = NULL;
}

static void
mhd_log(void *cls, const char *fmt, va_list ap)
{
    char buf[512];
    size_t n;

    (void)cls;
    vsnprintf(buf, sizeof(buf), fmt, ap);
    n = strlen(buf);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    log_msg_str(LOG_DEBUG, "http", "detail", buf);
}

int
server_parse_addr(const char *text, struct sockaddr_storage *ss,
                  struct gerr *err)
{
    char host[128];
    const char *colon;
    char *end;
    unsigned long port;
    size_t hl;

    memset(ss, 0, sizeof(*ss));
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':')
            goto bad;
        hl = (size_t)(close - text - 1);
        if (hl >= sizeof(host))
            goto bad;
        memcpy(host, text + 1, hl);
        colon = close + 1;
    } else {
        colon = strrchr(text, ':');
        if (colon == NULL)
            goto bad;
        hl = (size_t)(colon - text);
        if (hl >= sizeof(host))
            goto bad;
        memcpy(host, text, hl);
    }
    host[hl] = '\0';
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (errno != 0 || *end != '\0' || colon[1] == '\0' || port > 65535)
        goto bad;
    if (text[0] == '[') {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            goto bad;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &s4->sin_addr) != 1)
            goto bad;
    }
    return 0;
bad:
    gerr_set(err, "bad address '%s' (want ADDR:PORT or [ADDR]:PORT)", text);
    return -1;
}

/*
 * XXX(mhd-errors): requests libmicrohttpd refuses itself (oversized
 * headers or URL, a malformed request line or chunk) get its HTML bodies;
 * this version has no hook to replace them.
 */
static int
make_responses(struct server *s)
{
    s->r_ok = json_response(ok_body, sizeof(ok_body) - 1,
                            MHD_RESPMEM_PERSISTENT);
    s->r_403 = error_response("forbidden");
    s->r_404 = error_response("not found");
    s->r_405 = error_response("method not allowed; use POST");
    s->r_413 = error_response("body too large");
    s->r_503 = error_response("cannot store events now; retry later");
    s->r_draining = error_response("shutting down; retry later");
    if (!s->r_ok || !s->r_403 || !s->r_404 || !s->r_405 || !s->r_413 ||
        !s->r_503 || !s->r_draining)
        return -1;
    MHD_add_response_header(s->r_405, MHD_HTTP_HEADER_ALLOW, "POST");
    MHD_add_response_header(s->r_413, MHD_HTTP_HEADER_CONNECTION, "close");
    MHD_add_response_header(s->r_503, MHD_HTTP_HEADER_RETRY_AFTER,
                            GRWHD_RETRY_AFTER);
    MHD_add_response_header(s->r_draining, MHD_HTTP_HEADER_RETRY_AFTER,
                            GRWHD_RETRY_AFTER);
    MHD_add_response_header(s->r_draining, MHD_HTTP_HEADER_CONNECTION,
                            "close");
    return 0;
}

static void
free_responses(struct server *s)
{
    struct MHD_Response *all[] = {s->r_ok,  s->r_403, s->r_404, s->r_405,
                                  s->r_413, s->r_503, s->r_draining};

    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (all[i] != NULL)
            MHD_destroy_response(all[i]);
}

struct server *
server_start(const struct server_conf *conf, struct gerr *err)
{
    struct server *s = xcalloc(1, sizeof(*s));
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    struct MHD_OptionItem opts[16];
    int n = 0;

    s->conf = *conf;
    s->conf.auth = NULL;
    s->auth = *conf->auth;
    {
        /* A reload must not wait behind a steady stream of requests. */
        pthread_rwlockattr_t ra;

        pthread_rwlockattr_init(&ra);
        pthread_rwlockattr_setkind_np(
            &ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
        pthread_rwlock_init(&s->auth_lock, &ra);
        pthread_rwlockattr_destroy(&ra);
    }
    pthread_mutex_init(&s->wait_mu, NULL);
    pthread_mutex_init(&s->conn_mu, NULL);
    atomic_init(&s->stopping, false);
    atomic_init(&s->draining, false);
    atomic_init(&s->active, 0);
    atomic_init(&s->suspended, 0);
    if (server_parse_addr(conf->listen, &ss, err) != 0)
        goto fail;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (make_responses(s) != 0) {
        gerr_set(err, "cannot build responses");
        goto fail;
    }
    /* First, or libmicrohttpd prints what comes before it itself. */
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_EXTERNAL_LOGGER,
                                        (intptr_t)mhd_log, NULL};
    if (conf->tls_cert != NULL) {
        /* Handshakes ask tls.c for the pair, so a reload swaps it. */
        if (tls_load(conf->tls_cert, conf->tls_key, err) != 0)
            goto fail;
        flags |= MHD_USE_TLS;
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0,
                                            tls_callback()};
        opts[n++] = (struct MHD_OptionItem){
            MHD_OPTION_HTTPS_PRIORITIES, 0,
            (void *)"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"};
    }
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, &ss};
    if (conf->threads > 1)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE,
                                            conf->threads, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT,
                                        conf->max_conns, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                        conf->max_conns_per_ip, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT,
                                        conf->conn_timeout, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_COMPLETED,
                                        (intptr_t)on_completed, s};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_NOTIFY_CONNECTION,
                                        (intptr_t)on_connection, s};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_URI_LOG_CALLBACK,
                                        (intptr_t)on_request_line, s};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024,
                                        NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    errno = 0;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                              MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    if (s->mhd == NULL) {
        gerr_set(err, "cannot listen on %s: %s", conf->listen,
                 errno != 0 ? strerror(errno) : "libmicrohttpd refused");
        goto fail;
    }
    if (pthread_create(&s->watchdog, NULL, watchdog_main, s) != 0) {
        MHD_stop_daemon(s->mhd);
        gerr_set(err, "cannot start watchdog thread");
        goto fail;
    }
    pthread_setname_np(s->watchdog, "grwhd-watchdog");
    s->watchdog_started = true;
    return s;
fail:
    free_responses(s);
    free(s);
    return NULL;
}

void
server_set_auth(struct server *s, const struct auth *a)
{
    pthread_rwlock_wrlock(&s->auth_lock);
    s->auth = *a;
    pthread_rwlock_unlock(&s->auth_lock);
}

unsigned
server_connections(struct server *s)
{
    const union MHD_DaemonInfo *di;

    if (s == NULL || s->mhd == NULL)
        return 0;
    di = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

void
server_stop(struct server *s, double wait_s)
{
    double until = util_mono() + wait_s;
    MHD_socket fd;

    if (s == NULL || s->abandoned)
        return;
    atomic_store(&s->draining, true);
    fd = MHD_quiesce_daemon(s->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
    /* Requests under way finish: their events are stored and answered. */
    while (atomic_load(&s->active) > 0 && util_mono() < until)
        usleep(10 * 1000);
    /* Past the bound, the ones still waiting for the spool hear 503. */
    pthread_mutex_lock(&s->wait_mu);
    while (s->wait_head != NULL)
        answer_late(s, s->wait_head);
    pthread_mutex_unlock(&s->wait_mu);
    until = util_mono() + GRWHD_RESUME_WAIT;
    while (atomic_load(&s->suspended) > 0 && util_mono() < until)
        usleep(10 * 1000);
    atomic_store(&s->stopping, true);
    if (s->watchdog_started)
        pthread_join(s->watchdog, NULL);
    if (atomic_load(&s->suspended) > 0) {
        /* libmicrohttpd aborts the process if stopped now; the exit that
         * follows closes the sockets anyway. */
        log_msg(LOG_WARN, "connections still suspended; not stopping the "
                          "listener cleanly");
        s->abandoned = true;
        return;
    }
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
}

void
server_free(struct server *s)
{
    if (s == NULL)
        return;
    if (s->mhd != NULL && !s->abandoned)
        server_stop(s, 0);
    if (s->abandoned)
        return;     /* its threads may still use it; the process ends */
    pthread_mutex_destroy(&s->wait_mu);
    pthread_mutex_destroy(&s->conn_mu);
    pthread_rwlock_destroy(&s->auth_lock);
    free_responses(s);
    free(s);
}
