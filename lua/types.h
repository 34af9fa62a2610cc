/* types.h - the event types GetResponse is known to send. */
#ifndef GRWHD_TYPES_H
#define GRWHD_TYPES_H

#include <stdbool.h>

/* NULL-terminated; the list is not closed, new types can arrive. */
#define GRWHD_TYPES_KNOWN 13
extern const char *const types_known[GRWHD_TYPES_KNOWN + 1];

bool types_is_known(const char *name);
/*
 * The known type a mistaken handler name most likely meant (a word
 * GetResponse's web interface uses, or the nearest spelling), or NULL.
 */
const char *types_suggest(const char *name);

#endif
