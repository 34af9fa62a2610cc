/* types.h - the event types GetResponse is known to send. */
#ifndef GRWHD_TYPES_H
#define GRWHD_TYPES_H

#include <stdbool.h>
#include <stddef.h>

/* NULL-terminated; the list is not closed, new types can arrive. */
#define GRWHD_TYPES_KNOWN 13
extern const char *const types_known[GRWHD_TYPES_KNOWN + 1];

bool types_is_known(const char *name);
/*
 * The known type a mistaken handler name most likely meant (a word
 * GetResponse's web interface uses, or the nearest spelling), or NULL.
 */
const char *types_suggest(const char *name);

struct lrt;

/* A name of the script's handler table; kind is NULL for a function,
 * else the Lua type of what the name holds. */
struct types_entry {
    char *name;
    const char *kind;
};

/* The script's handler names, sorted; free with types_entries_free. */
size_t types_entries(struct lrt *rt, struct types_entry **out);
void types_entries_free(struct types_entry *e, size_t n);

/*
 * Names of a loaded script that will never see an event, as far as is
 * known: unknown types (with the likely meant one), handler names bound
 * to something other than a function, no handler at all, no default.
 * Each becomes one call of warn, serious or a note, in a stable order.
 */
typedef void types_warn_fn(void *arg, bool serious, const char *msg);
void types_check_script(struct lrt *rt, types_warn_fn *warn, void *arg);

#endif
