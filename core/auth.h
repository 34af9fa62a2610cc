/* auth.h - the shared secrets a request must carry in its query string. */
#ifndef GRWHD_AUTH_H
#define GRWHD_AUTH_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

#define GRWHD_AUTH_MAX_SECRETS 16
#define GRWHD_AUTH_SECRET_MAX 1024
#define GRWHD_AUTH_DIGEST 32

/*
 * Secrets are kept only as SHA-256 digests: comparing digests in constant
 * time hides both the value and the length of every configured secret.
 */
struct auth {
    size_t n;
    unsigned char digest[GRWHD_AUTH_MAX_SECRETS][GRWHD_AUTH_DIGEST];
    /* Secrets with a byte other than A-Z a-z 0-9 - . _ ~, which must be
     * percent-encoded in the webhook's URL ('+' there means a space). */
    size_t need_encoding;
};

void auth_init(struct auth *a);
int auth_add(struct auth *a, const char *secret, size_t len,
             struct gerr *err);
/* Adds one secret per non-empty line; '#' starts a comment line.  A file
 * without any secret is an error. */
int auth_add_file(struct auth *a, const char *path, struct gerr *err);
/* True when no secret is configured: every request is let in. */
bool auth_open(const struct auth *a);
/* Whether a and b hold the same secrets in the same order. */
bool auth_same(const struct auth *a, const struct auth *b);
/* Whether given matches any secret; time does not depend on which. */
bool auth_check(const struct auth *a, const char *given, size_t len);

#endif
