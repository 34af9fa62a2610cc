/* intake.c - the spool's one writer: group commit, outcomes, retries. */
#include "intake.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "dispatch.h"
#include "keyset.h"
#include "log.h"
#include "metrics.h"

/* Pending events read back per refill or due-retry query. */
#define INTAKE_REFILL_BATCH 256
/* Due retries are looked for at least this often, which is also how soon
 * a `grwhd spool retry` run beside the daemon takes effect. */
#define INTAKE_POLL_SECONDS 1.0
#define INTAKE_PRUNE_SECONDS 10.0
#define INTAKE_PRUNE_LIMIT 10000
#define INTAKE_PROBE_SECONDS 1.0
#define INTAKE_BACKOFF_BASE 1.0
#define INTAKE_BACKOFF_CAP 600.0
/*
 * Outcomes wait this long, or for this many of them, before a write of
 * their own: one wake-up and one commit per handful instead of per event.
 * A request's write takes them along at once.
 */
#define INTAKE_OUTCOME_DELAY 0.002
#define INTAKE_OUTCOME_BATCH 512

enum mark {
    MARK_START,
    MARK_DONE,
    MARK_FAIL,
};

struct completion {
    int64_t id;
    enum mark kind;
    int attempts;           /* including the one this is about */
    char *type;             /* MARK_FAIL: for the log line */
    char *error;
    enum spool_state result;    /* what was recorded */
    double retry_in;            /* SPOOL_SCHEDULED: seconds to the retry */
    int type_index;             /* for the metrics */
    struct completion *next;
};

struct intake {
    struct spool *spool;
    struct intake_conf conf;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_cond_t ack;     /* dispatch pointer taken, or work finished */
    /* Guarded by mu. */
    struct intake_job *jobs, **jobs_tail;
    struct completion *done, **done_tail;
    size_t ndone;           /* in done */
    double done_since;      /* when done last became non-empty */
    int flushers;           /* callers of intake_flush waiting */
    struct dispatch *dispatch;
    bool dispatch_changed;
    bool busy;              /* the thread is working on taken jobs */
    bool stop;
    bool failing;           /* the last write to the spool failed */
    int64_t backlog;
    /* Intake thread only. */
    struct dispatch *active;    /* its copy of dispatch, taken under mu */
    int64_t cursor;         /* highest id handed to dispatch */
    bool overflow;          /* pending events exist that are not in memory */
    double next_due;        /* earliest scheduled retry (0: none) */
    double next_poll;
    double next_prune;
    double next_probe;      /* while failing: when to try a write again */
    bool due_blocked;       /* due events wait for room in the queues */
    uint64_t rng;
    /*
     * Delivery keys: gen[0] takes new keys and becomes gen[1] after one
     * window, when the old gen[1] is dropped; so a key is remembered for
     * at least one window and at most two.  txn holds the keys of the
     * transaction being written, merged into gen[0] once it commits.
     */
    struct keyset gen[2];
    double gen_started;
    struct keyset txn;
    bool dedupe_oom;
    struct keyset ended;    /* ids whose attempt ends in this batch */
    unsigned char *keys;    /* the transaction's new keys, back to back */
    size_t nkeys, capkeys;
};

double
intake_backoff(int attempt, double u)
{
    double step = INTAKE_BACKOFF_BASE;

    for (int i = 1; i < attempt && step < INTAKE_BACKOFF_CAP; i++)
        step *= 2;
    if (step > INTAKE_BACKOFF_CAP)
        step = INTAKE_BACKOFF_CAP;
    return step / 2 + u * step / 2;
}

/* xorshift64*: jitter needs spread, not secrecy. */
static double
next_unit(struct intake *in)
{
    in->rng ^= in->rng >> 12;
    in->rng ^= in->rng << 25;
    in->rng ^= in->rng >> 27;
    return (double)((in->rng * 2685821657736338717ULL) >> 11) /
           9007199254740992.0;
}

struct due_ctx {
    struct intake *in;
    int64_t requeued;
    bool refused;           /* the workers' queues are full */
};

static int
offer_due(void *arg, struct spool_event *ev)
{
    struct due_ctx *ctx = arg;
    /*
     * No attempts: a dead event that `grwhd spool retry` queued again.
     * Dead events are not in the backlog, so it joins it now.
     */
    bool requeued = ev->attempts == 0;

    if (!dispatch_offer(ctx->in->active, ev)) {
        ctx->refused = true;
        return 1;
    }
    ctx->requeued += requeued;
    return 0;
}

struct refill_ctx {
    struct intake *in;
    bool refused;
};

static int
refill_one(void *arg, struct spool_event *ev)
{
    struct refill_ctx *ctx = arg;

    int64_t id = ev->id;    /* a worker may free ev once offered */

    if (!dispatch_offer(ctx->in->active, ev)) {
        ctx->refused = true;
        return 1;
    }
    ctx->in->cursor = id;
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

/* Hands due retries to the workers, marking them running. */
static void
poll_due(struct intake *in, double now)
{
    struct due_ctx ctx = {.in = in};
    int n = 0;

    in->next_poll = now + INTAKE_POLL_SECONDS;
    if (spool_begin(in->spool, false) != 0)
        return;
    n = spool_load_due(in->spool, now, INTAKE_REFILL_BATCH, offer_due, &ctx);
    if (n < 0 || spool_commit(in->spool) != 0) {
        spool_rollback(in->spool);
        log_msg_str(LOG_ERROR, "spool retry scan failed", "error",
                    spool_errmsg(in->spool));
        return;
    }
    pthread_mutex_lock(&in->mu);
    in->backlog += ctx.requeued;
    pthread_mutex_unlock(&in->mu);
    /* More may be due at once (a large spool retry): read on as soon as
     * the workers have room, not a poll later. */
    in->due_blocked = ctx.refused;
    in->next_due = spool_next_due(in->spool);
}

static void
prune(struct intake *in, double now)
{
    double keys_before = in->conf.dedupe_window > 0
                             ? now - in->conf.dedupe_window
                             : now;

    in->next_prune = now + INTAKE_PRUNE_SECONDS;
    if (spool_begin(in->spool, false) != 0)
        return;
    if (spool_prune(in->spool, now - in->conf.keep_done, keys_before,
                    INTAKE_PRUNE_LIMIT) < 0 ||
        spool_commit(in->spool) != 0) {
        spool_rollback(in->spool);
        log_msg_str(LOG_WARN, "spool prune failed", "error",
                    spool_errmsg(in->spool));
    }
}

static void
hand_over(struct intake *in, struct intake_job *job)
{
    for (size_t i = 0; i < job->n; i++) {
        struct spool_event *ev = job->ev[i];
        int64_t id = ev->id;    /* a worker may free ev once offered */

        job->ev[i] = NULL;
        if (job->result != INTAKE_STORED || id == 0) {
            spool_event_free(ev);       /* not stored, or a repeat */
            continue;
        }
        metrics_received(ev->type);
        if (!in->overflow && in->active != NULL &&
            dispatch_offer(in->active, ev)) {
            in->cursor = id;
            continue;
        }
        in->overflow = true;
        spool_event_free(ev);
    }
}

/* Where a failed attempt goes: a retry at *next_at, or dead. */
static enum spool_state
fate(struct intake *in, const struct completion *c, double now,
     double *next_at)
{
    if (c->attempts >= in->conf.max_attempts)
        return SPOOL_DEAD;
    *next_at = now + intake_backoff(c->attempts, next_unit(in));
    return SPOOL_SCHEDULED;
}

/* An event id as a key set key (ids are never 0). */
static const unsigned char *
id_key(int64_t id)
{
    static _Thread_local unsigned char k[GRWHD_KEYSET_KEY];

    memset(k, 0, sizeof(k));
    memcpy(k, &id, sizeof(id));
    return k;
}

static void
txn_key(struct intake *in, const unsigned char *key)
{
    if (in->nkeys == in->capkeys) {
        in->capkeys = in->capkeys ? in->capkeys * 2 : 256;
        in->keys = xrealloc(in->keys, in->capkeys * GRWHD_DEDUPE_KEY);
    }
    memcpy(in->keys + in->nkeys * GRWHD_DEDUPE_KEY, key, GRWHD_DEDUPE_KEY);
    in->nkeys++;
}

static bool
seen(const struct intake *in, const unsigned char *key)
{
    return keyset_has(&in->gen[0], key) || keyset_has(&in->gen[1], key) ||
           keyset_has(&in->txn, key);
}

/* After a commit: the transaction's keys join the window's. */
static void
keep_keys(struct intake *in, double now)
{
    if (now - in->gen_started >= in->conf.dedupe_window) {
        struct keyset old = in->gen[1];

        in->gen[1] = in->gen[0];
        in->gen[0] = old;
        keyset_clear(&in->gen[0]);
        in->gen_started = now;
    }
    if (in->txn.n > 0 && !keyset_merge(&in->gen[0], &in->txn) &&
        !in->dedupe_oom) {
        in->dedupe_oom = true;
        log_msg(LOG_ERROR, "out of memory for delivery keys: some repeated "
                           "deliveries may run twice");
    }
    keyset_clear(&in->txn);
}

static void
load_key(void *arg, const unsigned char *key, double seen_at)
{
    struct intake *in = arg;

    (void)seen_at;
    keyset_add(&in->gen[0], key);
}

/*
 * Stores the jobs' events and the outcomes in one transaction.  On
 * success *finished counts the events now done or dead.
 */
static int
write_all(struct intake *in, struct intake_job *jobs, struct completion *cs,
          double now, int64_t *finished)
{
    bool dedupe = in->conf.dedupe_window > 0;

    in->nkeys = 0;
    if (spool_begin(in->spool, jobs != NULL) != 0)
        return -1;
    for (struct intake_job *j = jobs; j; j = j->next) {
        j->duplicates = 0;
        for (size_t i = 0; i < j->n; i++) {
            struct spool_event *ev = j->ev[i];
            int fresh = 1;

            ev->id = 0;
            if (dedupe && ev->has_key) {
                fresh = !seen(in, ev->key);
                if (fresh)
                    txn_key(in, ev->key);
            }
            if (!fresh)
                j->duplicates++;
            else if (spool_insert(in->spool, ev) != 0)
                goto fail;
        }
        /*
         * A repeat is a request sent again, so identical events inside
         * one request are each real (two clicks in the same second):
         * its keys count only for the requests after it.
         */
        for (size_t i = 0; dedupe && i < j->n; i++)
            if (j->ev[i]->has_key && j->ev[i]->id != 0 &&
                !keyset_add(&in->txn, j->ev[i]->key))
                goto fail;
    }
    /* A start whose end is in the same batch need not be written. */
    keyset_clear(&in->ended);
    for (struct completion *c = cs; c; c = c->next)
        if (c->kind != MARK_START && !keyset_add(&in->ended, id_key(c->id)))
            goto fail;
    /* The commit's keys go in one row: one insert, not one per event. */
    if (in->nkeys > 0 &&
        spool_remember_keys(in->spool, in->keys, in->nkeys, now) != 0)
        goto fail;
    for (struct completion *c = cs; c; c = c->next) {
        enum spool_state st = SPOOL_RUNNING;
        double next_at = 0;
        int rc;

        if (c->kind == MARK_START && keyset_has(&in->ended, id_key(c->id)))
            continue;
        if (c->kind == MARK_DONE)
            st = SPOOL_DONE;
        else if (c->kind == MARK_FAIL)
            st = fate(in, c, now, &next_at);
        rc = spool_record(in->spool, c->id, st, c->attempts, c->error,
                          next_at);
        if (rc != 0)
            goto fail;
        if (st == SPOOL_SCHEDULED &&
            (in->next_due == 0 || next_at < in->next_due))
            in->next_due = next_at;
        if (st == SPOOL_SCHEDULED)
            c->retry_in = next_at - now;
        c->result = st;
        *finished += st == SPOOL_DONE || st == SPOOL_DEAD;
    }
    if (spool_commit(in->spool) == 0) {
        if (dedupe)
            keep_keys(in, now);
        return 0;
    }
fail:
    spool_rollback(in->spool);
    keyset_clear(&in->txn);
    *finished = 0;
    return -1;
}

/* One line per failed attempt, saying what happens next. */
static void
log_failure(const struct completion *c)
{
    struct log_line l;
    bool retry = c->result == SPOOL_SCHEDULED;

    if (!log_begin(&l, retry ? LOG_WARN : LOG_ERROR,
                   retry ? "handler failed, will retry"
                         : "handler failed, event is dead"))
        return;
    log_int(&l, "spool_id", (long long)c->id);
    log_int(&l, "attempt", c->attempts);
    log_str(&l, "type", c->type);
    if (retry)
        log_num(&l, "retry_in_s", c->retry_in);
    log_str(&l, "error", c->error);
    log_end(&l);
}

/* The log line and the metrics of recorded outcomes, then their memory. */
static void
report_completions(struct completion *c)
{
    for (; c; c = c->next) {
        if (c->kind == MARK_FAIL)
            log_failure(c);
        if (c->kind != MARK_START)
            metrics_handled(c->type_index,
                            c->result == SPOOL_DONE    ? METRICS_OK
                            : c->result == SPOOL_DEAD ? METRICS_DEAD
                                                      : METRICS_RETRY);
    }
}

static void
free_completions(struct completion *c)
{
    while (c) {
        struct completion *next = c->next;
        free(c->type);
        free(c->error);
        free(c);
        c = next;
    }
}

/* Puts completions back in front of the queue after a failed write. */
static void
requeue(struct intake *in, struct completion *cs)
{
    struct completion *last = cs;

    if (in->done == NULL)
        in->done_since = util_now();
    in->ndone++;
    while (last->next) {
        last = last->next;
        in->ndone++;
    }
    last->next = in->done;
    if (in->done == NULL)
        in->done_tail = &last->next;
    in->done = cs;
}

/*
 * Whether the outcomes waiting should be written now.  While the spool
 * refuses writes they wait for the probe (or for requests, whose write
 * takes them along) instead of spinning.
 */
static bool
outcomes_due(const struct intake *in, double now)
{
    return in->done != NULL && !in->failing &&
           (in->ndone >= INTAKE_OUTCOME_BATCH || in->flushers > 0 ||
            in->stop || now >= in->done_since + INTAKE_OUTCOME_DELAY);
}

static void
wait_for_work(struct intake *in)
{
    while (in->jobs == NULL && !outcomes_due(in, util_now()) &&
           !in->stop && !in->dispatch_changed) {
        double until = 0;
        struct timespec ts;

        if (in->active != NULL) {
            until = in->next_poll;
            if (in->next_due > 0 && in->next_due < until &&
                !in->due_blocked)
                until = in->next_due;
            if (in->next_prune < until)
                until = in->next_prune;
        }
        if (in->failing && (until == 0 || in->next_probe < until))
            until = in->next_probe;
        if (in->done != NULL && !in->failing &&
            (until == 0 || in->done_since + INTAKE_OUTCOME_DELAY < until))
            until = in->done_since + INTAKE_OUTCOME_DELAY;
        if (until == 0) {
            pthread_cond_wait(&in->cv, &in->mu);
            continue;
        }
        if (until <= util_now())
            return;
        ts.tv_sec = (time_t)until;
        ts.tv_nsec = (long)((until - (double)ts.tv_sec) * 1e9);
        pthread_cond_timedwait(&in->cv, &in->mu, &ts);
    }
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
        double now;
        bool room;
        int rc;

        wait_for_work(in);
        if (in->stop && in->jobs == NULL &&
            (in->done == NULL || in->failing) && !in->dispatch_changed) {
            /* Unwritten outcomes only run those events again later. */
            if (in->done != NULL)
                log_msg(LOG_WARN, "spool refuses writes; some outcomes "
                                  "not recorded, those events run again");
            break;
        }
        in->busy = true;
        jobs = in->jobs;
        in->jobs = NULL;
        in->jobs_tail = &in->jobs;
        cs = in->done;
        in->done = NULL;
        in->done_tail = &in->done;
        in->ndone = 0;
        room = cs != NULL;      /* outcomes: the workers made room */
        if (in->dispatch_changed) {
            in->dispatch_changed = false;
            in->active = in->dispatch;
            in->overflow = in->active != NULL;
            pthread_cond_broadcast(&in->ack);
        }
        pthread_mutex_unlock(&in->mu);

        now = util_now();
        rc = (jobs || cs) ? write_all(in, jobs, cs, now, &finished) : 0;
        if (rc != 0)
            log_msg_str(LOG_ERROR, "spool write failed", "error",
                        spool_errmsg(in->spool));
        for (struct intake_job *j = jobs; j; j = j->next) {
            j->result = rc == 0 ? INTAKE_STORED : INTAKE_FAILED;
            if (rc == 0)
                stored += (int64_t)(j->n - j->duplicates);
        }

        pthread_mutex_lock(&in->mu);
        if (jobs || cs)
            in->failing = rc != 0;
        in->backlog += stored - finished;
        if (rc != 0 && cs != NULL) {
            /* Keep the outcomes for the next try rather than lose them. */
            requeue(in, cs);
            cs = NULL;
        }
        pthread_mutex_unlock(&in->mu);

        /*
         * Counters move only after the backlog does, so a scrape that
         * sees an outcome also sees the backlog without that event.
         */
        for (struct intake_job *j = jobs; rc == 0 && j; j = j->next)
            metrics_duplicates(j->duplicates);
        report_completions(cs);

        for (struct intake_job *j = jobs; j; j = next) {
            next = j->next;
            hand_over(in, j);
            j->done(j);     /* j may be gone after this */
        }
        free_completions(cs);
        /*
         * Nothing may come to write (a balancer keeps traffic away while
         * /readyz says 503), so the spool is tried on its own until it
         * takes writes again.
         */
        now = util_now();
        if (rc != 0)
            in->next_probe = now + INTAKE_PROBE_SECONDS;
        else if (in->failing && now >= in->next_probe) {
            bool ok = spool_probe(in->spool) == 0;

            in->next_probe = now + INTAKE_PROBE_SECONDS;
            pthread_mutex_lock(&in->mu);
            in->failing = !ok;
            pthread_mutex_unlock(&in->mu);
            if (ok)
                log_msg(LOG_INFO, "spool writable again");
        }
        if (in->active != NULL) {
            if (in->overflow)
                refill(in);
            now = util_now();
            if (room)
                in->due_blocked = false;
            if (now >= in->next_poll ||
                (in->next_due > 0 && now >= in->next_due &&
                 !in->due_blocked))
                poll_due(in, now);
            if (now >= in->next_prune)
                prune(in, now);
        }
        pthread_mutex_lock(&in->mu);
        in->busy = false;
        pthread_cond_broadcast(&in->ack);
    }
    pthread_mutex_unlock(&in->mu);
    return NULL;
}

struct intake *
intake_start(struct spool *s, const struct intake_conf *conf,
             struct gerr *err)
{
    struct intake *in = xcalloc(1, sizeof(*in));
    int64_t buried, requeued;

    in->spool = s;
    in->conf = *conf;
    in->jobs_tail = &in->jobs;
    in->done_tail = &in->done;
    buried = spool_bury(s, conf->max_attempts);
    if (buried > 0)
        log_msg(LOG_ERROR, "events whose last attempt stopped the daemon "
                           "are now dead; see grwhd spool dead");
    in->backlog = spool_backlog(s);
    requeued = spool_requeued(s);
    /* Requeued events join the backlog when they are taken up. */
    in->backlog -= requeued;
    if (buried < 0 || in->backlog < 0 || requeued < 0) {
        gerr_set(err, "spool: %s", spool_errmsg(s));
        free(in);
        return NULL;
    }
    in->next_due = spool_next_due(s);
    in->gen_started = util_now();
    if (conf->dedupe_window > 0 &&
        spool_each_key(s, in->gen_started - conf->dedupe_window, load_key,
                       in) < 0) {
        gerr_set(err, "spool: %s", spool_errmsg(s));
        free(in);
        return NULL;
    }
    in->rng = (uint64_t)(util_now() * 1e6) ^ ((uint64_t)getpid() << 32) ^
              0x9e3779b97f4a7c15ULL;
    pthread_mutex_init(&in->mu, NULL);
    pthread_cond_init(&in->cv, NULL);
    pthread_cond_init(&in->ack, NULL);
    if (pthread_create(&in->thread, NULL, intake_main, in) != 0) {
        gerr_set(err, "cannot start intake thread");
        free(in);
        return NULL;
    }
    pthread_setname_np(in->thread, "grwhd-intake");
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
    /* A batch is let in whole while the backlog is under its bound, so
     * one larger than the bound is not refused for ever. */
    if (in->stop || in->backlog >= in->conf.max_backlog) {
        rc = -1;
    } else {
        *in->jobs_tail = job;
        in->jobs_tail = &job->next;
        pthread_cond_signal(&in->cv);
    }
    pthread_mutex_unlock(&in->mu);
    return rc;
}

static void
push_completion(struct intake *in, struct completion *c)
{
    bool first;

    pthread_mutex_lock(&in->mu);
    first = in->done == NULL;
    *in->done_tail = c;
    in->done_tail = &c->next;
    if (first)
        in->done_since = util_now();
    in->ndone++;
    /* The first sets the intake's deadline; after it only a full batch
     * wakes the intake early. */
    if (first || in->ndone == INTAKE_OUTCOME_BATCH)
        pthread_cond_signal(&in->cv);
    pthread_mutex_unlock(&in->mu);
}

/*
 * XXX(c-crash): the start is written with the next transaction, without
 * waiting for it; a handler whose C code kills the process before then
 * leaves no count, and runs again on every restart.
 */
void
intake_started(void *arg, const struct spool_event *ev)
{
    struct completion *c = xcalloc(1, sizeof(*c));

    c->id = ev->id;
    c->kind = MARK_START;
    c->attempts = ev->attempts + 1;
    push_completion(arg, c);
}

void
intake_complete(void *arg, struct spool_event *ev, bool ok, const char *error)
{
    struct completion *c = xcalloc(1, sizeof(*c));

    c->id = ev->id;
    c->kind = ok ? MARK_DONE : MARK_FAIL;
    c->attempts = ev->attempts + 1;
    c->type_index = metrics_type_index(ev->type);
    if (!ok) {
        c->type = xstrdup(ev->type ? ev->type : "");
        c->error = xstrdup(error ? error : "");
    }
    spool_event_free(ev);
    push_completion(arg, c);
}

void
intake_flush(struct intake *in)
{
    pthread_mutex_lock(&in->mu);
    /* Outcomes are waited for too, unless the spool is refusing them
     * (they are kept for another try, which may never come). */
    in->flushers++;
    pthread_cond_signal(&in->cv);
    while (in->jobs != NULL || in->busy ||
           (in->done != NULL && !in->failing))
        pthread_cond_wait(&in->ack, &in->mu);
    in->flushers--;
    pthread_mutex_unlock(&in->mu);
}

bool
intake_healthy(struct intake *in)
{
    bool ok;

    pthread_mutex_lock(&in->mu);
    ok = !in->failing;
    pthread_mutex_unlock(&in->mu);
    return ok;
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
    free_completions(in->done);
    spool_close(in->spool);
    keyset_free(&in->gen[0]);
    keyset_free(&in->gen[1]);
    keyset_free(&in->txn);
    keyset_free(&in->ended);
    free(in->keys);
    pthread_mutex_destroy(&in->mu);
    pthread_cond_destroy(&in->cv);
    pthread_cond_destroy(&in->ack);
    free(in);
}
