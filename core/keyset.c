/* keyset.c - a set of fixed-size random keys (open addressing). */
#include "keyset.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEYSET_MIN_CAP 1024

static const unsigned char zero[GRWHD_KEYSET_KEY];

static size_t
home(const unsigned char *key, size_t cap)
{
    uint64_t h;

    memcpy(&h, key, sizeof(h));
    return (size_t)h & (cap - 1);
}

/* An all-zero key would read as an empty slot; flip one bit of it. */
static const unsigned char *
normal(const unsigned char *key, unsigned char *tmp)
{
    if (memcmp(key, zero, GRWHD_KEYSET_KEY) != 0)
        return key;
    memset(tmp, 0, GRWHD_KEYSET_KEY);
    tmp[GRWHD_KEYSET_KEY - 1] = 1;
    return tmp;
}

bool
keyset_has(const struct keyset *ks, const unsigned char *key)
{
    unsigned char tmp[GRWHD_KEYSET_KEY];

    if (ks->n == 0)
        return false;
    key = normal(key, tmp);
    for (size_t i = home(key, ks->cap);; i = (i + 1) & (ks->cap - 1)) {
        const unsigned char *s = ks->slots + i * GRWHD_KEYSET_KEY;

        if (memcmp(s, zero, GRWHD_KEYSET_KEY) == 0)
            return false;
        if (memcmp(s, key, GRWHD_KEYSET_KEY) == 0)
            return true;
    }
}

static void
put(unsigned char *slots, size_t cap, const unsigned char *key)
{
    for (size_t i = home(key, cap);; i = (i + 1) & (cap - 1)) {
        unsigned char *s = slots + i * GRWHD_KEYSET_KEY;

        if (memcmp(s, zero, GRWHD_KEYSET_KEY) == 0) {
            memcpy(s, key, GRWHD_KEYSET_KEY);
            return;
        }
    }
}

/* Keeps the load under one half, so probes stay short. */
static bool
grow(struct keyset *ks)
{
    size_t cap = ks->cap ? ks->cap * 2 : KEYSET_MIN_CAP;
    unsigned char *slots = calloc(cap, GRWHD_KEYSET_KEY);

    if (slots == NULL)
        return false;
    for (size_t i = 0; i < ks->cap; i++) {
        const unsigned char *s = ks->slots + i * GRWHD_KEYSET_KEY;
        if (memcmp(s, zero, GRWHD_KEYSET_KEY) != 0)
            put(slots, cap, s);
    }
    free(ks->slots);
    ks->slots = slots;
    ks->cap = cap;
    return true;
}

bool
keyset_add(struct keyset *ks, const unsigned char *key)
{
    unsigned char tmp[GRWHD_KEYSET_KEY];

    if (keyset_has(ks, key))
        return true;
    if ((ks->n + 1) * 2 > ks->cap && !grow(ks))
        return false;
    put(ks->slots, ks->cap, normal(key, tmp));
    ks->n++;
    return true;
}

bool
keyset_merge(struct keyset *dst, const struct keyset *src)
{
    for (size_t i = 0; i < src->cap; i++) {
        const unsigned char *s = src->slots + i * GRWHD_KEYSET_KEY;

        if (memcmp(s, zero, GRWHD_KEYSET_KEY) != 0 && !keyset_add(dst, s))
            return false;
    }
    return true;
}

void
keyset_clear(struct keyset *ks)
{
    if (ks->slots != NULL)
        memset(ks->slots, 0, ks->cap * GRWHD_KEYSET_KEY);
    ks->n = 0;
}

void
keyset_free(struct keyset *ks)
{
    free(ks->slots);
    memset(ks, 0, sizeof(*ks));
}
