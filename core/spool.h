/* spool.h - the durable event store (SQLite in WAL mode). */
#ifndef GRWHD_SPOOL_H
#define GRWHD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/*
 * An event's life: pending (no outcome yet) -> running (an attempt began)
 * -> done, or scheduled (a retry at next_at) -> running -> ..., or dead
 * once --max-attempts ran out.  Dead events wait for `grwhd spool retry`.
 */
enum spool_state {
    SPOOL_PENDING = 0,
    SPOOL_DONE = 1,
    SPOOL_DEAD = 2,
    SPOOL_SCHEDULED = 3,
    SPOOL_RUNNING = 4,
};

#define GRWHD_DEDUPE_KEY 16

struct spool_stats {
    int64_t pending;        /* waiting for a worker, or running */
    int64_t scheduled;
    int64_t dead;
    int64_t done;           /* not yet pruned */
    double oldest;          /* received_at of the oldest unfinished, or 0 */
};

/*
 * One event as stored.  Made by spool_event_new, its strings share one
 * allocation with it (one malloc per event, not seven); only last_error
 * is a separate one.  Freed by spool_event_free.
 */
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
    /* Delivery key for de-duplication (set by the receiver). */
    bool has_key;
    unsigned char key[GRWHD_DEDUPE_KEY];
    /* Dead events only: the last error. */
    char *last_error;
};

struct spool;

/*
 * Opens (creating when absent) the spool at path for the daemon.  Only
 * one daemon may own a spool; a second one on the same file is refused.
 * Events left running by a crash become pending again.
 */
struct spool *spool_open(const char *path, struct gerr *err);
/*
 * Marks dead the events whose last allowed attempt was cut short by a
 * crash (pending again, with max_attempts made): one that kills the
 * daemon must not run forever.  Returns how many, or -1.
 */
int64_t spool_bury(struct spool *s, int max_attempts);
/* Opens an existing spool for the spool command, beside a running daemon. */
struct spool *spool_open_admin(const char *path, struct gerr *err);
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
/* Records one finished attempt: done, or dead with its error. */
int spool_finish(struct spool *s, int64_t id, bool ok, const char *error);
/*
 * Sets an event's outcome: its state, the attempts made so far, the last
 * error (NULL keeps none) and, when scheduled, the time of its retry.
 */
int spool_record(struct spool *s, int64_t id, enum spool_state state,
                 int attempts, const char *error, double next_at);
/* Appends n delivery keys (back to back in keys) seen at time now. */
int spool_remember_keys(struct spool *s, const unsigned char *keys, size_t n,
                        double now);
int spool_remember_key(struct spool *s, const unsigned char *key, double now);
/* Calls fn for every key seen at or after since, oldest first; returns
 * how many, or -1. */
int spool_each_key(struct spool *s, double since,
                   void (*fn)(void *arg, const unsigned char *key,
                              double seen),
                   void *arg);
/*
 * Deletes done events finished before done_before and delivery keys seen
 * before keys_before, at most limit of each.  Returns how many rows went.
 */
int spool_prune(struct spool *s, double done_before, double keys_before,
                int limit);

/*
 * Calls fn for pending events with id > after, in id order, at most limit
 * of them.  fn owns an event it accepts (returns 0); when it refuses one
 * (non-zero) the load stops and that event is freed here.  Returns how
 * many events fn accepted, or -1.
 */
typedef int (*spool_load_fn)(void *arg, struct spool_event *ev);
int spool_load(struct spool *s, int64_t after, int limit, spool_load_fn fn,
               void *arg);

/*
 * Like spool_load, for scheduled events whose retry time is not after
 * now, soonest first.  Each given to fn is marked running.
 */
int spool_load_due(struct spool *s, double now, int limit, spool_load_fn fn,
                   void *arg);
/* Time of the next scheduled retry, or 0 when none is scheduled. */
double spool_next_due(struct spool *s);

/* Number of events in state (pending counts running too), or -1. */
int64_t spool_count(struct spool *s, enum spool_state state);
/* Events neither done nor dead, or -1. */
int64_t spool_backlog(struct spool *s);
/* Of those, dead events queued again by spool_retry and not yet taken up
 * by a daemon (which then counts them into its backlog), or -1. */
int64_t spool_requeued(struct spool *s);
int spool_stats(struct spool *s, struct spool_stats *st);
/* Calls fn for each dead event, oldest first (fn owns it). */
int spool_each_dead(struct spool *s, spool_load_fn fn, void *arg);
/*
 * Schedules dead events again, now, with a fresh count of attempts: the
 * listed ids (n of them), or every dead event when ids is NULL.  Returns
 * how many were re-queued, or -1.
 */
int64_t spool_retry(struct spool *s, const int64_t *ids, size_t n);
/* Deletes every dead event; returns how many, or -1. */
int64_t spool_purge_dead(struct spool *s);

/* The last SQLite error as text (for a rolled-back transaction, what
 * made it fail). */
const char *spool_errmsg(struct spool *s);
/* A small durable write, to learn whether the spool can be written again
 * (after a full disk, say): 0 if it can. */
int spool_probe(struct spool *s);

/* The strings of an event, in the order spool_event_new takes them. */
enum spool_text {
    SPOOL_TYPE,
    SPOOL_CONTACT,
    SPOOL_WEBHOOK_ID,
    SPOOL_REQUEST_ID,
    SPOOL_REMOTE_ADDR,
    SPOOL_JSON,
    SPOOL_TEXTS,
};

/*
 * A zeroed event holding copies of text[i] (len[i] bytes, NUL-terminated
 * in the copy; a NULL text stays NULL); ev->len is len[SPOOL_JSON].
 */
struct spool_event *spool_event_new(const char *const text[SPOOL_TEXTS],
                                    const size_t len[SPOOL_TEXTS]);
void spool_event_free(struct spool_event *ev);

#endif
