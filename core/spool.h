/* spool.h - the durable event store (SQLite in WAL mode). */
#ifndef GRWHD_SPOOL_H
#define GRWHD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

enum spool_state {
    SPOOL_PENDING = 0,
    SPOOL_DONE = 1,
    SPOOL_FAILED = 2,
};

/* One event as stored; every string is owned (see spool_event_free). */
struct spool_event {
    int64_t id;
    double received_at;
    char *type;
    char *contact;
    char *webhook_id;   /* may be NULL */
    char *request_id;   /* may be NULL */
    char *remote_addr;
    int batch_index;    /* 0-based */
    int batch_size;
    int attempts;       /* attempts already made */
    char *json;
    size_t len;
};

struct spool;

/*
 * Opens (creating when absent) the spool at path.  Only one process may
 * write a spool at a time; a second daemon on the same file is refused.
 */
struct spool *spool_open(const char *path, struct gerr *err);
void spool_close(struct spool *s);

/*
 * A durable transaction's COMMIT returns after the WAL is fsynced.  One
 * that only records outcomes need not be: losing it on power loss runs
 * those events again, which at-least-once delivery allows, and the next
 * durable commit syncs it anyway.
 */
int spool_begin(struct spool *s, bool durable);
int spool_commit(struct spool *s);
void spool_rollback(struct spool *s);

/* Stores ev as pending and sets ev->id.  Inside spool_begin/commit. */
int spool_insert(struct spool *s, struct spool_event *ev);
/* Records one finished attempt: done, or failed with its error. */
int spool_finish(struct spool *s, int64_t id, bool ok, const char *error);

/*
 * Calls fn for pending events with id > after, in id order, at most limit
 * of them.  fn owns an event it accepts (returns 0); when it refuses one
 * (non-zero) the load stops and that event is freed here.  Returns how
 * many events fn accepted, or -1.
 */
typedef int (*spool_load_fn)(void *arg, struct spool_event *ev);
int spool_load(struct spool *s, int64_t after, int limit, spool_load_fn fn,
               void *arg);

/* Number of events in state, or -1. */
int64_t spool_count(struct spool *s, enum spool_state state);

/* The last SQLite error as text, and whether it means "no space". */
const char *spool_errmsg(struct spool *s);

void spool_event_free(struct spool_event *ev);

#endif
