/* dedupe.c - the key that recognises a delivery GetResponse repeats. */
#include "dedupe.h"

#include <stdio.h>
#include <string.h>

#include <gnutls/crypto.h>

int
dedupe_key(const char *webhook_id, int batch_index, const char *json,
           size_t len, unsigned char out[GRWHD_DEDUPE_KEY])
{
    unsigned char digest[32];
    gnutls_hash_hd_t h;
    char tag[24];
    int rc = 0;

    if (gnutls_hash_init(&h, GNUTLS_DIG_SHA256) != 0)
        return -1;
    /* A prefix per kind: a header key can never equal a body digest. */
    if (webhook_id != NULL) {
        int n = snprintf(tag, sizeof(tag), "id:%d:", batch_index);
        rc |= gnutls_hash(h, tag, (size_t)n);
        rc |= gnutls_hash(h, webhook_id, strlen(webhook_id));
    } else {
        rc |= gnutls_hash(h, "body:", 5);
        rc |= gnutls_hash(h, json, len);
    }
    gnutls_hash_deinit(h, digest);
    if (rc != 0)
        return -1;
    memcpy(out, digest, GRWHD_DEDUPE_KEY);
    return 0;
}
