/* tls.c - the certificate and key the listener presents, reloadable. */
#include "tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>

/* Certificates in one chain file. */
#define TLS_CHAIN_MAX 16

struct pair {
    gnutls_pcert_st pcert[TLS_CHAIN_MAX];
    unsigned n;
    gnutls_privkey_t key;
    struct pair *older;
};

/*
 * The handshake callback takes no argument of ours, hence a global.
 * XXX(tls-retire): a replaced pair is freed only at exit, since nothing
 * tells when the last handshake using it is over; a few KiB per reload.
 */
static _Atomic(struct pair *) current;
static pthread_mutex_t retired_mu = PTHREAD_MUTEX_INITIALIZER;
static struct pair *retired;

static void
pair_free(struct pair *p)
{
    for (unsigned i = 0; i < p->n; i++)
        gnutls_pcert_deinit(&p->pcert[i]);
    if (p->key)
        gnutls_privkey_deinit(p->key);
    free(p);
}

/* GnuTLS checks that the key belongs to the first certificate here. */
static int
check_match(gnutls_datum_t *cert, gnutls_datum_t *key, struct gerr *err)
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
        /* GnuTLS words a mismatch as "data not available"; say it. */
        gerr_set(err, "%s",
                 rc == GNUTLS_E_CERTIFICATE_KEY_MISMATCH ||
                         rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE
                     ? "the key does not belong to the certificate (or "
                       "one of the files is not PEM)"
                     : gnutls_strerror(rc));
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
    if (check_match(&cert, &key, err) != 0)
        goto fail;
    p->n = TLS_CHAIN_MAX;
    if ((rc = gnutls_pcert_list_import_x509_raw(p->pcert, &p->n, &cert,
                                                GNUTLS_X509_FMT_PEM, 0)) <
        0) {
        p->n = 0;
        gerr_set(err, "%s: %s", cert_path, gnutls_strerror(rc));
        goto fail;
    }
    if ((rc = gnutls_privkey_init(&p->key)) < 0 ||
        (rc = gnutls_privkey_import_x509_raw(p->key, &key,
                                             GNUTLS_X509_FMT_PEM, NULL, 0)) <
            0) {
        gerr_set(err, "%s: %s", key_path, gnutls_strerror(rc));
        goto fail;
    }
    gnutls_free(cert.data);
    gnutls_memset(key.data, 0, key.size);
    gnutls_free(key.data);
    old = atomic_exchange(&current, p);
    if (old != NULL) {
        pthread_mutex_lock(&retired_mu);
        old->older = retired;
        retired = old;
        pthread_mutex_unlock(&retired_mu);
    }
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

static int
retrieve(gnutls_session_t session, const gnutls_datum_t *req_ca_dn,
         int nreqs, const gnutls_pk_algorithm_t *algos, int nalgos,
         gnutls_pcert_st **pcert, unsigned int *pcert_length,
         gnutls_privkey_t *pkey)
{
    struct pair *p = atomic_load(&current);

    (void)session;
    (void)req_ca_dn;
    (void)nreqs;
    (void)algos;
    (void)nalgos;
    if (p == NULL)
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
tls_cleanup(void)
{
    struct pair *p = atomic_exchange(&current, NULL);

    if (p != NULL)
        pair_free(p);
    pthread_mutex_lock(&retired_mu);
    while (retired != NULL) {
        p = retired;
        retired = p->older;
        pair_free(p);
    }
    pthread_mutex_unlock(&retired_mu);
}
