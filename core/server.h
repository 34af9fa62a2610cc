/* server.h - the webhook listener (libmicrohttpd, HTTPS with GnuTLS). */
#ifndef GRWHD_SERVER_H
#define GRWHD_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "auth.h"
#include "util.h"

struct intake;

struct server_conf {
    const char *listen;         /* "ADDR:PORT" or "[ADDR]:PORT" */
    const char *tls_cert;       /* PEM paths; both or neither */
    const char *tls_key;
    const char *path;           /* NULL: any path is the webhook */
    const char *secret_param;
    const struct auth *auth;    /* copied */
    size_t max_body;
    unsigned threads;           /* polling threads */
    unsigned max_conns;
    unsigned max_conns_per_ip;
    /* Seconds a connection may stay idle, and a request may take to
     * arrive in full (from the connection's start or its last answer). */
    unsigned conn_timeout;
    struct intake *intake;
    bool dedupe;                /* delivery keys are wanted (a window set) */
};

struct server;

struct server *server_start(const struct server_conf *conf, struct gerr *err);
/*
 * Stops accepting (new requests hear 503), waits (at most wait_s) for the
 * requests under way to be stored and answered, tells those still waiting
 * for the spool 503, then closes every connection.  The intake may still
 * hold jobs of this server: flush it before server_free.
 */
void server_stop(struct server *s, double wait_s);
void server_free(struct server *s);
/* Checks requests against a copy of a from now on; a is not kept. */
void server_set_auth(struct server *s, const struct auth *a);
/* Open connections of the webhook listener. */
unsigned server_connections(struct server *s);

/* Parses "ADDR:PORT" / "[ADDR]:PORT" into a socket address. */
struct sockaddr_storage;
int server_parse_addr(const char *text, struct sockaddr_storage *ss,
                      struct gerr *err);

#endif
