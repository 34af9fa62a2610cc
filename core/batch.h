/* batch.h - a request body turned into the events it carries. */
#ifndef GRWHD_BATCH_H
#define GRWHD_BATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "util.h"

/* Deeper JSON is refused: no real payload nests past a handful, and a
 * handler's json.decode takes as deep. */
#define GRWHD_JSON_DEPTH_MAX 128
/* Events in one body: ten times what GetResponse sends.  Each event costs
 * a record of its own, so a small body of many tiny events could
 * otherwise take much memory. */
#define GRWHD_BATCH_MAX 1000

struct batch_event {
    const char *json;   /* the element without white space between tokens,
                           inside batch.compact (not NUL-terminated) */
    size_t len;
    char *type;         /* "" when missing or not a string */
    char *contact;      /* contact.contactId, or "" */
};

struct batch {
    char *body;         /* owned; UTF-8 (invalid sequences replaced) */
    size_t len;
    char *compact;      /* owned; the events' text, back to back */
    bool is_array;
    bool repaired;      /* invalid UTF-8 was replaced by U+FFFD */
    bool too_many;      /* refused: more than GRWHD_BATCH_MAX events */
    size_t n;
    struct batch_event *ev;
};

/*
 * Splits body (malloc'd, len bytes; ownership passes to b in every case)
 * into events.  An object gives one event, an array of objects one per
 * element, an empty array none.  Returns -1 with a message for a person
 * when the body is not JSON, nests too deep, is not an object or an
 * array of objects, or holds more than GRWHD_BATCH_MAX events (too_many).
 */
int batch_parse(struct batch *b, char *body, size_t len, struct gerr *err);
void batch_free(struct batch *b);


#endif
