/* auth.c - the shared secrets a request must carry in its query string. */
#include "auth.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)secret[i];

        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
              (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
              c == '~')) {
            a->need_encoding++;
            break;
        }
    }
    a->n++;
    return 0;
}

/* One line of a secret file: blank and '#' lines hold no secret. */
static int
add_line(struct auth *a, const char *line, size_t n, int *found,
         struct gerr *err)
{
    while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' ' ||
                     line[n - 1] == '\t'))
        n--;
    if (n == 0 || line[0] == '#')
        return 0;
    if (memchr(line, '\0', n) != NULL) {
        gerr_set(err, "a NUL byte in the line");
        return -1;
    }
    if (auth_add(a, line, n, err) != 0)
        return -1;
    (*found)++;
    return 0;
}

int
auth_add_file(struct auth *a, const char *path, struct gerr *err)
{
    /* Room for every secret at full length, with CRLFs and comments. */
    enum { cap = 64 * 1024 };
    char *buf = NULL;
    size_t len = 0;
    int lineno = 0, found = 0, rc = -1;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);

    if (fd < 0) {
        gerr_set(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    /* A FIFO or a device (a symlink to /dev/zero) never ends. */
    if (fstat(fd, &st) != 0) {
        gerr_set(err, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        gerr_set(err, "%s: %s", path,
                 S_ISDIR(st.st_mode) ? "is a folder" : "not a regular file");
        goto out;
    }
    buf = xmalloc(cap + 1);
    for (;;) {
        ssize_t got = read(fd, buf + len, cap + 1 - len);

        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            gerr_set(err, "%s: %s", path, strerror(errno));
            goto out;
        }
        if (got == 0)
            break;
        len += (size_t)got;
        if (len > cap) {
            gerr_set(err, "%s: larger than 64 KiB, not a secret file",
                     path);
            goto out;
        }
    }
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(buf + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - buf) : len;

        lineno++;
        if (add_line(a, buf + at, end - at, &found, err) != 0) {
            struct gerr why = *err;

            gerr_set(err, "%.300s:%d: %.150s", path, lineno, why.msg);
            goto out;
        }
        at = end + 1;
    }
    /* An emptied file must not open the door: a file given holds one. */
    if (found == 0) {
        gerr_set(err, "%s: no secret in the file", path);
        goto out;
    }
    rc = 0;
out:
    if (buf != NULL) {
        explicit_bzero(buf, cap + 1);
        free(buf);
    }
    close(fd);
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
