/* intake.c - group commit: requests' events into the spool, then to work. */
#include "intake.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "dispatch.h"
#include "log.h"

/* Pending events read back per refill query. */
#define INTAKE_REFILL_BATCH 256

struct completion {
    int64_t id;
    bool ok;
    char *error;
    struct completion *next;
};

struct intake {
    struct spool *spool;
    int64_t max_backlog;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t ack;     /* dispatch pointer taken, or work finished */
    /* Guarded by mu. */
    struct intake_job *jobs, **jobs_tail;
    struct completion *done;
    struct dispatch *dispatch;
    bool dispatch_changed;
    bool busy;              /* the thread is working on taken jobs */
    bool stop;
    int64_t backlog;
    /* Intake thread only. */
    struct dispatch *active;    /* its copy of dispatch, taken under mu */
    int64_t cursor;         /* highest id handed to dispatch */
    bool overflow;          /* pending events exist that are not in memory */
};

struct refill_ctx {
    struct intake *in;
    bool refused;
};

static int
refill_one(void *arg, struct spool_event *ev)
{
    struct refill_ctx *ctx = arg;

    if (!dispatch_offer(ctx->in->active, ev)) {
        ctx->refused = true;
        return 1;
    }
    ctx->in->cursor = ev->id;
    return 0;
}

/*
 * Reads pending events past the cursor back from the spool while the
 * workers have room: this recovers what an earlier run left, and what did
 * not fit in memory when it arrived.  A full queue leaves overflow set;
 * the next completion wakes the thread to try again.
 */
static void
refill(struct intake *in)
{
    struct refill_ctx ctx = {.in = in};

    for (;;) {
        int n;

        ctx.refused = false;
        n = spool_load(in->spool, in->cursor, INTAKE_REFILL_BATCH,
                       refill_one, &ctx);
        if (n < 0) {
            log_msg_str(LOG_ERROR, "spool read failed", "error",
                        spool_errmsg(in->spool));
            return;
        }
        if (ctx.refused)
            return;
        if (n < INTAKE_REFILL_BATCH) {
            in->overflow = false;
            return;
        }
    }
}

static void
hand_over(struct intake *in, struct intake_job *job)
{
    for (size_t i = 0; i < job->n; i++) {
        struct spool_event *ev = job->ev[i];

        job->ev[i] = NULL;

        if (job->result == INTAKE_STORED && !in->overflow &&
            in->active != NULL && dispatch_offer(in->active, ev)) {
            in->cursor = ev->id;
            continue;
        }
        if (job->result == INTAKE_STORED)
            in->overflow = true;
        spool_event_free(ev);
    }
}

static int
write_all(struct intake *in, struct intake_job *jobs, struct completion *cs)
{
    if (spool_begin(in->spool, jobs != NULL) != 0)
        return -1;
    for (struct intake_job *j = jobs; j; j = j->next)
        for (size_t i = 0; i < j->n; i++)
            if (spool_insert(in->spool, j->ev[i]) != 0)
                goto fail;
    for (struct completion *c = cs; c; c = c->next)
        if (spool_finish(in->spool, c->id, c->ok, c->error) != 0)
            goto fail;
    if (spool_commit(in->spool) == 0)
        return 0;
fail:
    spool_rollback(in->spool);
    return -1;
}

static void *
intake_main(void *arg)
{
    struct intake *in = arg;

    pthread_mutex_lock(&in->mu);
    for (;;) {
        struct intake_job *jobs, *next;
        struct completion *cs;
        int64_t stored = 0, finished = 0;
        int rc;

        while (in->jobs == NULL && in->done == NULL && !in->stop &&
               !in->dispatch_changed)
            pthread_cond_wait(&in->cv, &in->mu);
        if (in->stop && in->jobs == NULL && in->done == NULL &&
            !in->dispatch_changed)
            break;
        in->busy = true;
        jobs = in->jobs;
        in->jobs = NULL;
        in->jobs_tail = &in->jobs;
        cs = in->done;
        in->done = NULL;
        if (in->dispatch_changed) {
            in->dispatch_changed = false;
            in->active = in->dispatch;
            in->overflow = in->active != NULL;
            pthread_cond_broadcast(&in->ack);
        }
        pthread_mutex_unlock(&in->mu);

        rc = (jobs || cs) ? write_all(in, jobs, cs) : 0;
        if (rc != 0)
            log_msg_str(LOG_ERROR, "spool write failed", "error",
                        spool_errmsg(in->spool));
        for (struct intake_job *j = jobs; j; j = j->next) {
            j->result = rc == 0 ? INTAKE_STORED : INTAKE_FAILED;
            if (rc == 0)
                stored += (int64_t)j->n;
        }
        for (struct completion *c = cs; c; c = c->next)
            finished++;

        pthread_mutex_lock(&in->mu);
        in->backlog += stored - (rc == 0 ? finished : 0);
        if (rc != 0 && cs != NULL) {
            /* Keep the outcomes for the next try rather than lose them. */
            struct completion *last = cs;
            while (last->next)
                last = last->next;
            last->next = in->done;
            in->done = cs;
            cs = NULL;
        }
        pthread_mutex_unlock(&in->mu);

        for (struct intake_job *j = jobs; j; j = next) {
            next = j->next;
            hand_over(in, j);
            j->done(j);     /* j may be gone after this */
        }
        while (cs) {
            struct completion *c = cs;
            cs = c->next;
            free(c->error);
            free(c);
        }
        if (in->overflow && in->active != NULL)
            refill(in);
        pthread_mutex_lock(&in->mu);
        in->busy = false;
        pthread_cond_broadcast(&in->ack);
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

struct intake *
intake_start(struct spool *s, int64_t max_backlog, struct gerr *err)
{
    struct intake *in = xcalloc(1, sizeof(*in));

    in->spool = s;
    in->max_backlog = max_backlog;
    in->jobs_tail = &in->jobs;
    in->backlog = spool_count(s, SPOOL_PENDING);
    if (in->backlog < 0) {
        gerr_set(err, "spool: %s", spool_errmsg(s));
        free(in);
        return NULL;
    }
    pthread_mutex_init(&in->mu, NULL);
    pthread_cond_init(&in->cv, NULL);
    pthread_cond_init(&in->ack, NULL);
    if (pthread_create(&in->thread, NULL, intake_main, in) != 0) {
        gerr_set(err, "cannot start intake thread");
        free(in);
        return NULL;
    }
    return in;
}

void
intake_set_dispatch(struct intake *in, struct dispatch *d)
{
    pthread_mutex_lock(&in->mu);
    in->dispatch = d;
    in->dispatch_changed = true;
    pthread_cond_signal(&in->cv);
    /* Once taken, the old pointer is never used again: it may be freed. */
    while (in->dispatch_changed)
        pthread_cond_wait(&in->ack, &in->mu);
    pthread_mutex_unlock(&in->mu);
}

int
intake_submit(struct intake *in, struct intake_job *job)
{
    int rc = 0;

    job->next = NULL;
    pthread_mutex_lock(&in->mu);
    if (in->stop || in->backlog + (int64_t)job->n > in->max_backlog) {
        rc = -1;
    } else {
        *in->jobs_tail = job;
        in->jobs_tail = &job->next;
        pthread_cond_signal(&in->cv);
    }
    pthread_mutex_unlock(&in->mu);
    return rc;
}

void
intake_complete(void *arg, struct spool_event *ev, bool ok, const char *error)
{
    struct intake *in = arg;
    struct completion *c = xcalloc(1, sizeof(*c));

    c->id = ev->id;
    c->ok = ok;
    c->error = error ? xstrdup(error) : NULL;
    spool_event_free(ev);
    pthread_mutex_lock(&in->mu);
    c->next = in->done;
    in->done = c;
    pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
}

void
intake_flush(struct intake *in)
{
    pthread_mutex_lock(&in->mu);
    while (in->jobs != NULL || in->busy)
        pthread_cond_wait(&in->ack, &in->mu);
    pthread_mutex_unlock(&in->mu);
}

int64_t
intake_backlog(struct intake *in)
{
    int64_t n;

    pthread_mutex_lock(&in->mu);
    n = in->backlog;
    pthread_mutex_unlock(&in->mu);
    return n;
}

void
intake_stop(struct intake *in)
{
    if (in == NULL)
        return;
    pthread_mutex_lock(&in->mu);
    in->stop = true;
    pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
    pthread_join(in->thread, NULL);
    spool_close(in->spool);
    pthread_mutex_destroy(&in->mu);
    pthread_cond_destroy(&in->cv);
    pthread_cond_destroy(&in->ack);
    free(in);
}
