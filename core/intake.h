/* intake.h - the spool's one writer: group commit, outcomes, retries. */
#ifndef GRWHD_INTAKE_H
#define GRWHD_INTAKE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "spool.h"
#include "util.h"

struct dispatch;

enum intake_result {
    INTAKE_STORED,          /* on disk: the request may be acknowledged */
    INTAKE_FAILED,          /* the spool refused the write */
};

/*
 * One request's events.  The submitter fills ev/n and done; the intake
 * thread stores the events, takes each (setting its slot to NULL; the
 * array stays the submitter's) and calls done(job) once with result set.
 * done runs on the intake thread and must not block.
 */
struct intake_job {
    struct spool_event **ev;
    size_t n;
    enum intake_result result;
    size_t duplicates;      /* events dropped as repeated deliveries */
    void (*done)(struct intake_job *job);
    void *arg;
    struct intake_job *next;
};

struct intake_conf {
    int64_t max_backlog;    /* unfinished events before submits fail */
    int max_attempts;       /* then an event is dead */
    double dedupe_window;   /* seconds a delivery key is kept; 0 = off */
    double keep_done;       /* seconds a done event is kept */
};

struct intake;

/* Takes s; the spool is closed by intake_stop. */
struct intake *intake_start(struct spool *s, const struct intake_conf *conf,
                            struct gerr *err);
/*
 * Starts feeding events (first those left pending by an earlier run) to d;
 * NULL stops feeding before d is stopped.
 */
void intake_set_dispatch(struct intake *in, struct dispatch *d);
/*
 * Queues job for the next commit.  Returns -1 without taking the job when
 * the backlog is over its bound or the spool is stopping: answer 503.
 */
int intake_submit(struct intake *in, struct intake_job *job);
/* An attempt at ev begins (a dispatch_start_fn). */
void intake_started(void *in, const struct spool_event *ev);
/* Records an attempt's outcome (a dispatch_done_fn); takes ev. */
void intake_complete(void *in, struct spool_event *ev, bool ok,
                     const char *error);
/* Returns once every job submitted so far has had its done call, and the
 * outcomes reported so far are written (unless writes are failing). */
void intake_flush(struct intake *in);
/* False while the last write to the spool failed (disk full, I/O). */
bool intake_healthy(struct intake *in);
/* Events stored and not yet done or dead. */
int64_t intake_backlog(struct intake *in);
/* Commits what is queued, then stops the thread and closes the spool. */
void intake_stop(struct intake *in);

/*
 * Seconds before retry number `attempt` (1 after the first failure):
 * 1 s doubling, capped at 10 min, scaled by u in [0, 1) into its upper
 * half (jitter that never retries sooner than half the step).
 */
double intake_backoff(int attempt, double u);

#endif
