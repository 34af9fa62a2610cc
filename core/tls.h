/* tls.h - the certificate and key the listener presents, reloadable. */
#ifndef GRWHD_TLS_H
#define GRWHD_TLS_H

#include "util.h"

/*
 * Loads the PEM certificate chain and private key and, when they belong
 * together, makes them the pair that new handshakes get; on any error the
 * pair in use stays.  Connections already open keep the pair they began
 * with.  Safe to call while the listener runs.
 */
int tls_load(const char *cert_path, const char *key_path, struct gerr *err);

/*
 * The gnutls_certificate_retrieve_function2 that libmicrohttpd calls for
 * each handshake (MHD_OPTION_HTTPS_CERT_CALLBACK).
 */
void *tls_callback(void);

/*
 * Called for each new connection before its handshake: replaced pairs are
 * freed only if the session's transport is its socket fd, as it is with
 * libmicrohttpd on GnuTLS 3.1.9 or later; otherwise they stay for good.
 */
void tls_check_transport(void *session, int fd);

/*
 * The connection on socket fd has closed: its session no longer needs the
 * pair its handshake took, which is freed if it has been replaced.
 */
void tls_release(int fd);

/* Pairs in memory: the current one and replaced ones still in use. */
unsigned tls_pairs(void);

/* Frees the pairs; only once no listener uses them. */
void tls_cleanup(void);

#endif
