/* dispatch.c - worker threads, each with its own Lua state. */
#include "dispatch.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "../lua/runtime.h"
#include "../lua/types.h"

/* Distinct unhandled types a state reports before it keeps quiet. */
#define DISPATCH_UNHANDLED_MAX 32

struct worker {
    struct dispatch *d;
    int index;
    pthread_t thread;
    bool started;
    struct lrt *rt;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct spool_event **ring;
    size_t head, count;
    bool stop;
    unsigned generation;    /* of the script its state was built from */
    /* The attempt running now (0 when idle), for dispatch_watch. */
    atomic_int_fast64_t busy_us, busy_id;
    int64_t warned_id;      /* dispatch_watch's thread only */
    /* Types without a handler already reported by this state. */
    char *unhandled[DISPATCH_UNHANDLED_MAX];
    int nunhandled;
};

struct dispatch {
    struct dispatch_conf conf;
    atomic_uint generation; /* bumped by dispatch_reload */
    pthread_mutex_t exit_mu;
    pthread_cond_t exit_cv;
    int exited;             /* workers whose thread has returned */
    size_t next_anon;       /* spreads events that name no contact */
    struct worker *w;
};

/* FNV-1a: stable, cheap, and good enough to spread contact ids. */
static uint64_t
hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;

    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/* Success at debug; a failure is logged by the intake, which decides
 * between a retry and a dead letter. */
static void
log_handled(const struct spool_event *ev, double seconds)
{
    struct log_line l;

    if (!log_begin(&l, LOG_DEBUG, "handled"))
        return;
    log_int(&l, "spool_id", (long long)ev->id);
    log_int(&l, "attempt", ev->attempts + 1);
    log_str(&l, "type", ev->type);
    log_num(&l, "ms", seconds * 1000.0);
    log_end(&l);
}

static void
log_script_warning(void *arg, bool serious, const char *msg)
{
    struct log_line l;

    if (log_begin(&l, serious ? LOG_WARN : LOG_INFO, msg)) {
        log_str(&l, "script", arg);
        log_end(&l);
    }
}

/* What `grwhd check` would warn about, once per load (by worker 0). */
static void
warn_about_script(struct worker *w)
{
    if (w->index == 0)
        types_check_script(w->rt, log_script_warning,
                           (void *)w->d->conf.lua->script);
}

static void
forget_unhandled(struct worker *w)
{
    for (int i = 0; i < w->nunhandled; i++)
        free(w->unhandled[i]);
    w->nunhandled = 0;
}

/*
 * An event no function takes is done without running anything: said
 * once per type and state, or a mistyped handler name loses events
 * without a word.
 */
static void
report_unhandled(struct worker *w, const struct spool_event *ev)
{
    const char *type = ev->type ? ev->type : "";
    struct log_line l;

    for (int i = 0; i < w->nunhandled; i++)
        if (strcmp(w->unhandled[i], type) == 0)
            return;
    if (w->nunhandled == DISPATCH_UNHANDLED_MAX)
        return;
    w->unhandled[w->nunhandled++] = xstrdup(type);
    if (log_begin(&l, LOG_WARN, "no handler and no default for this type: "
                                "its events are done without running")) {
        log_str(&l, "type", type);
        log_int(&l, "spool_id", (long long)ev->id);
        log_int(&l, "worker", w->index);
        log_end(&l);
    }
}

/*
 * Swaps in a state built afresh from the script, between events.  If the
 * new one cannot be built the old one goes on, and the error is logged
 * (file:line for the script's own faults).
 */
static void
rebuild(struct worker *w, const char *why)
{
    struct dispatch *d = w->d;
    unsigned gen = atomic_load(&d->generation);
    struct gerr err;
    struct lrt *rt = lrt_new(d->conf.lua, w->index, &err);
    struct log_line l;

    w->generation = gen;
    if (rt == NULL) {
        if (log_begin(&l, LOG_ERROR, "script reload failed, old one kept")) {
            log_int(&l, "worker", w->index);
            log_str(&l, "why", why);
            log_str(&l, "error", err.msg);
            log_end(&l);
        }
        return;
    }
    lrt_free(w->rt);
    w->rt = rt;
    forget_unhandled(w);
    if (log_begin(&l, LOG_INFO, "script loaded")) {
        log_int(&l, "worker", w->index);
        log_str(&l, "why", why);
        log_end(&l);
    }
    warn_about_script(w);
}

static void *
worker_main(void *arg)
{
    struct worker *w = arg;
    struct dispatch *d = w->d;

    for (;;) {
        struct spool_event *ev;
        struct gerr err;
        double t0;
        bool ok;
        int rc;

        pthread_mutex_lock(&w->mu);
        while (w->count == 0 && !w->stop &&
               w->generation == atomic_load(&d->generation))
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->stop) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        if (w->generation != atomic_load(&d->generation)) {
            pthread_mutex_unlock(&w->mu);
            rebuild(w, "reload");
            continue;
        }
        ev = w->ring[w->head];
        w->head = (w->head + 1) % d->conf.queue_cap;
        w->count--;
        pthread_mutex_unlock(&w->mu);

        err.msg[0] = '\0';
        if (d->conf.start != NULL)
            d->conf.start(d->conf.done_arg, ev);
        t0 = util_mono();
        atomic_store(&w->busy_id, ev->id);
        atomic_store(&w->busy_us, (int_fast64_t)(t0 * 1e6));
        rc = lrt_call(w->rt, ev, &err);
        ok = rc >= 0;
        atomic_store(&w->busy_us, 0);
        metrics_handler_latency(util_mono() - t0);
        if (rc == 1)
            report_unhandled(w, ev);
        else if (ok)
            log_handled(ev, util_mono() - t0);
        d->conf.done(d->conf.done_arg, ev, ok, ok ? NULL : err.msg);
        if (lrt_spent(w->rt))
            rebuild(w, "memory limit");
    }
    pthread_mutex_lock(&d->exit_mu);
    d->exited++;
    pthread_cond_broadcast(&d->exit_cv);
    pthread_mutex_unlock(&d->exit_mu);
    return NULL;
}

struct dispatch *
dispatch_start(const struct dispatch_conf *conf, struct gerr *err)
{
    struct dispatch *d = xcalloc(1, sizeof(*d));

    d->conf = *conf;
    atomic_init(&d->generation, 0);
    pthread_mutex_init(&d->exit_mu, NULL);
    pthread_cond_init(&d->exit_cv, NULL);
    d->w = xcalloc((size_t)conf->workers, sizeof(*d->w));
    for (int i = 0; i < conf->workers; i++) {
        struct worker *w = &d->w[i];

        w->d = d;
        w->index = i;
        pthread_mutex_init(&w->mu, NULL);
        pthread_cond_init(&w->cv, NULL);
        w->ring = xcalloc(conf->queue_cap, sizeof(*w->ring));
        w->rt = lrt_new(conf->lua, i, err);
        if (w->rt == NULL)
            goto fail;
        warn_about_script(w);
    }
    for (int i = 0; i < conf->workers; i++) {
        char name[16];

        if (pthread_create(&d->w[i].thread, NULL, worker_main, &d->w[i])) {
            gerr_set(err, "cannot start worker thread");
            goto fail;
        }
        d->w[i].started = true;
        /* Named for top -H and perf. */
        snprintf(name, sizeof(name), "grwhd-lua%u", (unsigned)i % 1000u);
        pthread_setname_np(d->w[i].thread, name);
    }
    return d;
fail:
    dispatch_stop(d, 0);
    return NULL;
}

void
dispatch_watch(struct dispatch *d, double limit)
{
    double now = util_mono();

    for (int i = 0; i < d->conf.workers; i++) {
        struct worker *w = &d->w[i];
        int_fast64_t since = atomic_load(&w->busy_us);
        int64_t id = (int64_t)atomic_load(&w->busy_id);
        struct log_line l;

        if (since == 0 || now - (double)since / 1e6 < limit ||
            id == w->warned_id)
            continue;
        w->warned_id = id;
        if (log_begin(&l, LOG_ERROR, "handler stuck past its time limit "
                                     "(blocked in C?); this worker's events "
                                     "wait")) {
            log_int(&l, "worker", i);
            log_int(&l, "spool_id", (long long)id);
            log_num(&l, "seconds", now - (double)since / 1e6);
            log_end(&l);
        }
    }
}

void
dispatch_reload(struct dispatch *d)
{
    atomic_fetch_add(&d->generation, 1);
    for (int i = 0; i < d->conf.workers; i++) {
        struct worker *w = &d->w[i];

        pthread_mutex_lock(&w->mu);
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
}

bool
dispatch_offer(struct dispatch *d, struct spool_event *ev)
{
    size_t i;
    struct worker *w;
    bool ok = false;

    if (ev->contact != NULL && ev->contact[0] != '\0')
        i = (size_t)(hash_str(ev->contact) % (uint64_t)d->conf.workers);
    else
        i = d->next_anon++ % (size_t)d->conf.workers;
    w = &d->w[i];
    pthread_mutex_lock(&w->mu);
    if (w->count < d->conf.queue_cap && !w->stop) {
        w->ring[(w->head + w->count) % d->conf.queue_cap] = ev;
        w->count++;
        ok = true;
        pthread_cond_signal(&w->cv);
    }
    pthread_mutex_unlock(&w->mu);
    return ok;
}

bool
dispatch_stop(struct dispatch *d, double wait_s)
{
    int started = 0;

    if (d == NULL)
        return true;
    for (int i = 0; i < d->conf.workers; i++) {
        struct worker *w = &d->w[i];

        started += w->started;
        pthread_mutex_lock(&w->mu);
        w->stop = true;
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
    }
    if (wait_s > 0) {
        double until = util_now() + wait_s;
        struct timespec ts = {.tv_sec = (time_t)until,
                              .tv_nsec = (long)((until - (double)(time_t)
                                                 until) * 1e9)};
        bool late = false;

        pthread_mutex_lock(&d->exit_mu);
        while (d->exited < started && !late)
            late = pthread_cond_timedwait(&d->exit_cv, &d->exit_mu, &ts) ==
                   ETIMEDOUT;
        late = d->exited < started;
        pthread_mutex_unlock(&d->exit_mu);
        /* A handler blocked in C past every bound: leave it running. */
        if (late)
            return false;
    }
    for (int i = 0; i < d->conf.workers; i++) {
        struct worker *w = &d->w[i];

        if (w->started)
            pthread_join(w->thread, NULL);
        /* What is still queued stays pending in the spool for next time. */
        for (size_t k = 0; k < w->count; k++)
            spool_event_free(w->ring[(w->head + k) % d->conf.queue_cap]);
        free(w->ring);
        lrt_free(w->rt);
        forget_unhandled(w);
        pthread_mutex_destroy(&w->mu);
        pthread_cond_destroy(&w->cv);
    }
    pthread_mutex_destroy(&d->exit_mu);
    pthread_cond_destroy(&d->exit_cv);
    free(d->w);
    free(d);
    return true;
}
