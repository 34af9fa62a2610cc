/* tls.c - the certificate and key the listener presents, reloadable. */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

#include "log.h"

/* Certificates in one chain file. */
#define TLS_CHAIN_MAX 16

/* Descriptors above this are not tracked (see retrieve). */
#define TLS_FD_MAX (1 << 20)

struct pair {
    gnutls_pcert_st pcert[TLS_CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    unsigned refs;      /* connections that took it, +1 while current */
    struct pair *next;  /* in the list of every pair in memory */
};

/*
 * GnuTLS keeps pointers to the pair a handshake took until the session
 * ends, so a replaced pair lives on until the last connection that took
 * it closes.  The handshake callback sees only the session, whose
 * transport is the socket, hence the table by descriptor and the globals.
 */
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct pair *current;
static struct pair **held;      /* by socket: the pair its session took */
static size_t nheld;
static struct pair *alive;      /* every pair in memory */
static bool untracked;          /* sessions cannot be told apart by socket */

static void
pair_free(struct pair *p)
{
    for (unsigned i = 0; i < p->n; i++)
        gnutls_pcert_deinit(&p->pcert[i]);
    if (p->key)
        gnutls_privkey_deinit(p->key);
    free(p);
}

/* Called with mu held. */
static void
unref(struct pair *p)
{
    if (--p->refs > 0)
        return;
    for (struct pair **pp = &alive; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    pair_free(p);
}

/* GnuTLS checks that the key belongs to the first certificate here. */
static int
check_match(gnutls_datum_t *cert, gnutls_datum_t *key, const char *cert_path,
            const char *key_path, struct gerr *err)
{
    gnutls_certificate_credentials_t cred;
    int rc;

    if (gnutls_certificate_allocate_credentials(&cred) != 0) {
        gerr_set(err, "out of memory");
        return -1;
    }
    rc = gnutls_certificate_set_x509_key_mem2(cred, cert, key,
                                              GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_certificate_free_credentials(cred);
    if (rc < 0) {
        /* GnuTLS words a mismatch as "data not available"; say it.
         * Either file may be the one that changed: name both. */
        if (rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH ||
            rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE)
            gerr_set(err, "%s: the key does not belong to the certificate "
                          "in %s", key_path, cert_path);
        else
            gerr_set(err, "%s, %s: %s", cert_path, key_path,
                     gnutls_strerror(rc));
        return -1;
    }
    return 0;
}

int
tls_load(const char *cert_path, const char *key_path, struct gerr *err)
{
    gnutls_datum_t cert = {NULL, 0}, key = {NULL, 0};
    struct pair *p = xcalloc(1, sizeof(*p)), *old;
    int rc;

    /* GnuTLS says only "Error while reading file": say why first. */
    if (access(cert_path, R_OK) != 0 || access(key_path, R_OK) != 0) {
        const char *bad = access(cert_path, R_OK) != 0 ? cert_path : key_path;

        gerr_set(err, "%s: %s", bad, strerror(errno));
        goto fail;
    }
    if ((rc = gnutls_load_file(cert_path, &cert)) < 0) {
        gerr_set(err, "%s: %s", cert_path, gnutls_strerror(rc));
        goto fail;
    }
    if ((rc = gnutls_load_file(key_path, &key)) < 0) {
        gerr_set(err, "%s: %s", key_path, gnutls_strerror(rc));
        goto fail;
    }
    /* Each file on its own first, so an error names the file at fault. */
    p->n = TLS_CHAIN_MAX;
    if ((rc = gnutls_pcert_list_import_x509_raw(
             p->pcert, &p->n, &cert, GNUTLS_X509_FMT_PEM,
             GNUTLS_X509_CRT_LIST_IMPORT_FAIL_IF_EXCEED)) < 0) {
        p->n = 0;
        if (rc == GNUTLS_E_SHORT_MEMORY_BUFFER)
            gerr_set(err, "%s: more than %d certificates in the chain",
                     cert_path, TLS_CHAIN_MAX);
        else
            gerr_set(err, "%s: %s (a PEM certificate chain is expected)",
                     cert_path, gnutls_strerror(rc));
        goto fail;
    }
    if ((rc = gnutls_privkey_init(&p->key)) < 0 ||
        (rc = gnutls_privkey_import_x509_raw(p->key, &key,
                                             GNUTLS_X509_FMT_PEM, NULL, 0)) <
            0) {
        gerr_set(err, "%s: %s (an unencrypted PEM key is expected)",
                 key_path, gnutls_strerror(rc));
        goto fail;
    }
    if (check_match(&cert, &key, cert_path, key_path, err) != 0)
        goto fail;
    gnutls_free(cert.data);
    gnutls_memset(key.data, 0, key.size);
    gnutls_free(key.data);
    p->refs = 1;
    pthread_mutex_lock(&mu);
    old = current;
    current = p;
    p->next = alive;
    alive = p;
    if (old != NULL)
        unref(old);
    pthread_mutex_unlock(&mu);
    return 0;
fail:
    gnutls_free(cert.data);
    if (key.data != NULL) {
        gnutls_memset(key.data, 0, key.size);
        gnutls_free(key.data);
    }
    pair_free(p);
    return -1;
}

/* Called with mu held.  Records that the session on fd took p. */
static bool
hold(int fd, struct pair *p)
{
    if ((size_t)fd >= nheld) {
        size_t n = nheld ? nheld : 64;
        struct pair **grown;

        while (n <= (size_t)fd)
            n *= 2;
        grown = realloc(held, n * sizeof(*held));
        if (grown == NULL)
            return false;
        memset(grown + nheld, 0, (n - nheld) * sizeof(*held));
        held = grown;
        nheld = n;
    }
    /* A second handshake on one session (a renegotiation) moves on. */
    if (held[fd] != NULL)
        unref(held[fd]);
    held[fd] = p;
    p->refs++;
    return true;
}

static int
retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_dn,
         int nreqs, const gnutls_pk_algorithm_t *algos, int nalgos,
         gnutls_pcert_st **pcert, unsigned int *pcert_length,
         gnutls_privkey_t *pkey)
{
    int fd = gnutls_transport_get_int(session);
    struct pair *p;
    bool ok = true;

    (void)req_ca_dn;
    (void)nreqs;
    (void)algos;
    (void)nalgos;
    pthread_mutex_lock(&mu);
    p = current;
    if (p != NULL && !untracked && fd >= 0 && fd < TLS_FD_MAX) {
        ok = hold(fd, p);
    } else if (p != NULL) {
        /*
         * A transport that is not a descriptor cannot be released on
         * close: the pair stays for good rather than be freed too soon.
         */
        p->refs++;
    }
    pthread_mutex_unlock(&mu);
    if (p == NULL || !ok)
        return -1;
    *pcert = p->pcert;
    *pcert_length = p->n;
    *pkey = p->key;
    return 0;
}

void *
tls_callback(void)
{
    return (void *)(gnutls_certificate_retrieve_function2 *)retrieve;
}

void
tls_check_transport(void *session, int fd)
{
    bool first = false;

    if (session != NULL &&
        gnutls_transport_get_int((gnutls_session_t)session) == fd)
        return;
    pthread_mutex_lock(&mu);
    first = !untracked;
    untracked = true;
    pthread_mutex_unlock(&mu);
    if (first)
        log_msg(LOG_WARN, "TLS sessions are not tied to their sockets; "
                          "replaced certificates stay in memory");
}

void
tls_release(int fd)
{
    pthread_mutex_lock(&mu);
    if (fd >= 0 && (size_t)fd < nheld && held[fd] != NULL) {
        unref(held[fd]);
        held[fd] = NULL;
    }
    pthread_mutex_unlock(&mu);
}

unsigned
tls_pairs(void)
{
    unsigned n = 0;

    pthread_mutex_lock(&mu);
    for (struct pair *p = alive; p; p = p->next)
        n++;
    pthread_mutex_unlock(&mu);
    return n;
}

void
tls_cleanup(void)
{
    pthread_mutex_lock(&mu);
    while (alive != NULL) {
        struct pair *p = alive;

        alive = p->next;
        pair_free(p);
    }
    current = NULL;
    free(held);
    held = NULL;
    nheld = 0;
    untracked = false;
    pthread_mutex_unlock(&mu);
}
