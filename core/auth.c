/* auth.c - the shared secrets a request must carry in its query string. */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <gnutls/crypto.h>

void
auth_init(struct auth *a)
{
    memset(a, 0, sizeof(*a));
}

static int
digest(const char *s, size_t len, unsigned char out[GRWHD_AUTH_DIGEST])
{
    return gnutls_hash_fast(GNUTLS_DIG_SHA256, s, len, out) == 0 ? 0 : -1;
}

int
auth_add(struct auth *a, const char *secret, size_t len, struct gerr *err)
{
    if (len == 0) {
        gerr_set(err, "empty secret");
        return -1;
    }
    if (len > GRWHD_AUTH_SECRET_MAX) {
        gerr_set(err, "secret longer than %d bytes", GRWHD_AUTH_SECRET_MAX);
        return -1;
    }
    if (a->n == GRWHD_AUTH_MAX_SECRETS) {
        gerr_set(err, "more than %d secrets", GRWHD_AUTH_MAX_SECRETS);
        return -1;
    }
    if (digest(secret, len, a->digest[a->n]) != 0) {
        gerr_set(err, "cannot hash secret");
        return -1;
    }
    a->n++;
    return 0;
}

int
auth_add_file(struct auth *a, const char *path, struct gerr *err)
{
    char line[GRWHD_AUTH_SECRET_MAX + 3];      /* + CR LF NUL */
    int lineno = 0, rc = 0, found = 0;
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        gerr_set(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        size_t n = strlen(line);

        lineno++;
        if (n > 0 && line[n - 1] != '\n' && !feof(f)) {
            gerr_set(err, "%s:%d: line too long", path, lineno);
            rc = -1;
            break;
        }
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' ||
                         line[n - 1] == ' ' || line[n - 1] == '\t'))
            n--;
        if (n == 0 || line[0] == '#')
            continue;
        if (auth_add(a, line, n, err) != 0) {
            struct gerr why = *err;

            gerr_set(err, "%.300s:%d: %.150s", path, lineno, why.msg);
            rc = -1;
            break;
        }
        found++;
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    /* An emptied file must not open the door: a file given holds one. */
    if (rc == 0 && found == 0) {
        gerr_set(err, "%s: no secret in the file", path);
        rc = -1;
    }
    return rc;
}

bool
auth_same(const struct auth *a, const struct auth *b)
{
    /* Our own secrets' digests, not a peer's guess: no need for constant
     * time here. */
    return a->n == b->n &&
           memcmp(a->digest, b->digest, a->n * GRWHD_AUTH_DIGEST) == 0;
}

bool
auth_open(const struct auth *a)
{
    return a->n == 0;
}

bool
auth_check(const struct auth *a, const char *given, size_t len)
{
    unsigned char d[GRWHD_AUTH_DIGEST];
    unsigned int match = 0;

    if (given == NULL || len > GRWHD_AUTH_SECRET_MAX)
        return false;
    if (digest(given, len, d) != 0)
        return false;
    /* Visit every secret and every byte: no early exit. */
    for (size_t i = 0; i < a->n; i++) {
        unsigned int diff = 0;

        for (size_t k = 0; k < GRWHD_AUTH_DIGEST; k++)
            diff |= (unsigned int)(d[k] ^ a->digest[i][k]);
        match |= (diff == 0);
    }
    return match != 0;
}
