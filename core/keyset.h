/* keyset.h - a set of fixed-size random keys (open addressing). */
#ifndef GRWHD_KEYSET_H
#define GRWHD_KEYSET_H

#include <stdbool.h>
#include <stddef.h>

#define GRWHD_KEYSET_KEY 16

/*
 * Keys are digests, so their first bytes are already a good hash.  There
 * is no removal: a set is dropped whole when its keys age out.
 */
struct keyset {
    unsigned char *slots;   /* cap * GRWHD_KEYSET_KEY bytes; zero = empty */
    size_t cap;             /* a power of two, or 0 */
    size_t n;
};

bool keyset_has(const struct keyset *ks, const unsigned char *key);
/* Adds key (a no-op when present); false only when memory ran out. */
bool keyset_add(struct keyset *ks, const unsigned char *key);
/* Adds every key of src to dst; false when memory ran out. */
bool keyset_merge(struct keyset *dst, const struct keyset *src);
/* Empties the set, keeping its memory for reuse. */
void keyset_clear(struct keyset *ks);
void keyset_free(struct keyset *ks);

#endif
