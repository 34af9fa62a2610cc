/* intake.h - group commit: requests' events into the spool, then to work. */
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
    void (*done)(struct intake_job *job);
    void *arg;
    struct intake_job *next;
};

struct intake;

/* Takes s; the spool is closed by intake_stop. */
struct intake *intake_start(struct spool *s, int64_t max_backlog,
                            struct gerr *err);
/*
 * Starts feeding events (first those left pending by an earlier run) to d;
 * NULL stops feeding before d is stopped.
 */
void intake_set_dispatch(struct intake *in, struct dispatch *d);
/*
 * Queues job for the next commit.  Returns -1 without taking the job when
 * the backlog is over its bound or the spool is failing: answer 503.
 */
int intake_submit(struct intake *in, struct intake_job *job);
/* Records an attempt's outcome (a dispatch_done_fn); takes ev. */
void intake_complete(void *in, struct spool_event *ev, bool ok,
                     const char *error);
/* Returns once every job submitted so far has had its done call. */
void intake_flush(struct intake *in);
/* Events stored and not yet finished. */
int64_t intake_backlog(struct intake *in);
/* Commits what is queued, then stops the thread and closes the spool. */
void intake_stop(struct intake *in);

#endif
