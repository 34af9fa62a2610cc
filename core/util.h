/* util.h - small shared helpers: error messages, time, UTF-8. */
#ifndef GRWHD_UTIL_H
#define GRWHD_UTIL_H

#include <stddef.h>
#include <stdint.h>

#define GRWHD_VERSION "0.1.0"

/* A message for a person, filled where a failure is decided. */
struct gerr {
    char msg[512];
};

void gerr_set(struct gerr *e, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Seconds since the epoch, and a monotonic clock in seconds. */
double util_now(void);
double util_mono(void);

/*
 * Checks that buf[0..len) is UTF-8.  Returns the offset of the first bad
 * byte, or len when all of it is valid.
 */
size_t util_utf8_valid(const unsigned char *buf, size_t len);
/* Length of the UTF-8 sequence led by byte c (1 for ASCII), or 0 for a
 * byte that cannot lead one. */
size_t util_utf8_len(unsigned char c);

/* malloc that never returns NULL: out of memory is not survivable here. */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
