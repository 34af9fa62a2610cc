/* dispatch.h - worker threads, each with its own Lua state. */
#ifndef GRWHD_DISPATCH_H
#define GRWHD_DISPATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "spool.h"
#include "util.h"

struct lrt_conf;

/*
 * Called on a worker thread when an event's attempt ends; takes ownership
 * of ev.  error is NULL on success and lives only during the call.
 */
typedef void (*dispatch_done_fn)(void *arg, struct spool_event *ev, bool ok,
                                 const char *error);
/* Called on a worker thread just before an attempt at ev begins. */
typedef void (*dispatch_start_fn)(void *arg, const struct spool_event *ev);

struct dispatch_conf {
    int workers;
    size_t queue_cap;               /* events held in memory per worker */
    const struct lrt_conf *lua;
    dispatch_start_fn start;        /* may be NULL */
    dispatch_done_fn done;
    void *done_arg;                 /* for both */
};

struct dispatch;

/* Starts the workers; fails when any of them cannot load the script. */
struct dispatch *dispatch_start(const struct dispatch_conf *conf,
                                struct gerr *err);
/*
 * Logs (once per attempt) a handler that has run longer than limit
 * seconds: one blocked in C, which the instruction count cannot stop.
 * Call it from one thread only.
 */
void dispatch_watch(struct dispatch *d, double limit);
/*
 * Has every worker build a fresh state from the script between events; a
 * worker whose new state fails to load keeps its old one.
 */
void dispatch_reload(struct dispatch *d);
/*
 * Queues ev for the worker that owns its contact, so one contact's events
 * run in the order offered.  Returns false, keeping ev the caller's, when
 * that worker's queue is full.
 */
bool dispatch_offer(struct dispatch *d, struct spool_event *ev);
/*
 * Lets running handlers finish, then joins; queued events are freed.
 * With wait_s > 0, gives up after that long and returns false, leaving
 * the workers (and d) alone: the caller should exit soon.
 */
bool dispatch_stop(struct dispatch *d, double wait_s);

#endif
