/* spool.c - the durable event store (SQLite in WAL mode). */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sqlite3.h>

#define SPOOL_SCHEMA_VERSION 1
/* WAL pages (4 KiB) after which the checkpointer is woken. */
#define SPOOL_CHECKPOINT_PAGES 2000

struct spool {
    sqlite3 *db;
    int lock_fd;
    sqlite3_stmt *begin, *commit, *rollback, *insert, *finish, *load;
    sqlite3_stmt *sync_full, *sync_normal;
    bool durable;           /* synchronous=FULL is in force */
    /*
     * Checkpoints (copying the WAL into the database file) run on a thread
     * of their own with its own connection, so the writer, which every
     * acknowledgement waits for, never does that copy itself.
     */
    sqlite3 *ck_db;
    pthread_t ck_thread;
    bool ck_started, ck_stop, ck_due;
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cv;
};

/*
 * Events are written once and never changed; what happens to them lives
 * in the small outcomes table.  Marking an event done then rewrites a few
 * bytes of a dense page instead of the page holding the event's JSON,
 * which halves what a busy spool writes.  An event without an outcome row
 * (or with state 0) is pending.
 */
static const char schema[] =
    "CREATE TABLE IF NOT EXISTS events ("
    " id INTEGER PRIMARY KEY,"
    " received_at REAL NOT NULL,"
    " type TEXT NOT NULL,"
    " contact TEXT NOT NULL,"
    " webhook_id TEXT,"
    " request_id TEXT,"
    " remote_addr TEXT,"
    " batch_index INTEGER NOT NULL,"
    " batch_size INTEGER NOT NULL,"
    " json TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS outcomes ("
    " id INTEGER PRIMARY KEY,"
    " state INTEGER NOT NULL,"
    " attempts INTEGER NOT NULL,"
    " last_error TEXT,"
    " finished_at REAL);"
    "PRAGMA user_version = 1;";

static int
prepare(struct spool *s, const char *sql, sqlite3_stmt **st)
{
    return sqlite3_prepare_v3(s->db, sql, -1, SQLITE_PREPARE_PERSISTENT, st,
                              NULL) == SQLITE_OK ? 0 : -1;
}

/*
 * A second writer on one spool would interleave ids and double-dispatch
 * events, so the daemon holds an exclusive lock on a file beside it.
 */
static int
take_lock(struct spool *s, const char *path, struct gerr *err)
{
    char lp[4096];

    if (snprintf(lp, sizeof(lp), "%s.lock", path) >= (int)sizeof(lp)) {
        gerr_set(err, "spool path too long");
        return -1;
    }
    s->lock_fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd < 0) {
        gerr_set(err, "%s: %s", lp, strerror(errno));
        return -1;
    }
    if (flock(s->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        gerr_set(err, "%s: %s", path,
                 errno == EWOULDBLOCK ? "in use by another grwhd"
                                      : strerror(errno));
        return -1;
    }
    return 0;
}

static void *
checkpointer_main(void *arg)
{
    struct spool *s = arg;

    pthread_mutex_lock(&s->ck_mu);
    for (;;) {
        while (!s->ck_due && !s->ck_stop)
            pthread_cond_wait(&s->ck_cv, &s->ck_mu);
        if (s->ck_stop)
            break;
        s->ck_due = false;
        pthread_mutex_unlock(&s->ck_mu);
        /* PASSIVE never blocks the writer; what it skips waits a round. */
        sqlite3_wal_checkpoint_v2(s->ck_db, NULL, SQLITE_CHECKPOINT_PASSIVE,
                                  NULL, NULL);
        pthread_mutex_lock(&s->ck_mu);
    }
    pthread_mutex_unlock(&s->ck_mu);
    return NULL;
}

/* Runs in the writer after each commit, in place of auto-checkpoint. */
static int
wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
    struct spool *s = arg;

    (void)db;
    (void)name;
    if (pages >= SPOOL_CHECKPOINT_PAGES) {
        pthread_mutex_lock(&s->ck_mu);
        s->ck_due = true;
        pthread_cond_signal(&s->ck_cv);
        pthread_mutex_unlock(&s->ck_mu);
    }
    return SQLITE_OK;
}

static int
start_checkpointer(struct spool *s, const char *path, struct gerr *err)
{
    pthread_mutex_init(&s->ck_mu, NULL);
    pthread_cond_init(&s->ck_cv, NULL);
    if (sqlite3_open_v2(path, &s->ck_db, SQLITE_OPEN_READWRITE, NULL) !=
        SQLITE_OK) {
        gerr_set(err, "%s: %s", path,
                 s->ck_db ? sqlite3_errmsg(s->ck_db) : "cannot open");
        return -1;
    }
    sqlite3_busy_timeout(s->ck_db, 1000);
    /* A connection learns the WAL mode only when it reads the file. */
    if (sqlite3_exec(s->ck_db, "PRAGMA journal_mode=WAL", NULL, NULL,
                     NULL) != SQLITE_OK) {
        gerr_set(err, "%s: %s", path, sqlite3_errmsg(s->ck_db));
        return -1;
    }
    if (pthread_create(&s->ck_thread, NULL, checkpointer_main, s) != 0) {
        gerr_set(err, "cannot start checkpoint thread");
        return -1;
    }
    s->ck_started = true;
    sqlite3_wal_hook(s->db, wal_hook, s);
    return 0;
}

struct spool *
spool_open(const char *path, struct gerr *err)
{
    struct spool *s = xcalloc(1, sizeof(*s));
    char *msg = NULL;

    s->lock_fd = -1;
    if (take_lock(s, path, err) != 0)
        goto fail;
    if (sqlite3_open_v2(path, &s->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                            SQLITE_OPEN_NOMUTEX,
                        NULL) != SQLITE_OK) {
        gerr_set(err, "%s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "cannot open");
        goto fail;
    }
    sqlite3_busy_timeout(s->db, 2000);
    /*
     * WAL with synchronous=FULL: a COMMIT returns only after the WAL is
     * fsynced, which is what lets an acknowledgement promise durability.
     */
    if (sqlite3_exec(s->db,
                     "PRAGMA journal_mode=WAL;"
                     "PRAGMA synchronous=FULL;"
                     "PRAGMA cache_size=-16384;"
                     "PRAGMA journal_size_limit=67108864;"
                     "PRAGMA foreign_keys=OFF;",
                     NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(s->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        gerr_set(err, "%s: %s", path, msg ? msg : sqlite3_errmsg(s->db));
        sqlite3_free(msg);
        goto fail;
    }
    s->durable = true;
    if (prepare(s, "PRAGMA synchronous=FULL", &s->sync_full) ||
        prepare(s, "PRAGMA synchronous=NORMAL", &s->sync_normal) ||
        prepare(s, "BEGIN IMMEDIATE", &s->begin) ||
        prepare(s, "COMMIT", &s->commit) ||
        prepare(s, "ROLLBACK", &s->rollback) ||
        prepare(s,
                "INSERT INTO events (received_at, type, contact, webhook_id,"
                " request_id, remote_addr, batch_index, batch_size, json)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                &s->insert) ||
        prepare(s,
                "INSERT INTO outcomes (id, state, attempts, last_error,"
                " finished_at) VALUES (?1, ?2, 1, ?3, ?4)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " attempts = attempts + 1, last_error = excluded.last_error,"
                " finished_at = excluded.finished_at",
                &s->finish) ||
        prepare(s,
                "SELECT e.id, e.received_at, e.type, e.contact, e.webhook_id,"
                " e.request_id, e.remote_addr, e.batch_index, e.batch_size,"
                " coalesce(o.attempts, 0), e.json"
                " FROM events e LEFT JOIN outcomes o ON o.id = e.id"
                " WHERE e.id > ? AND coalesce(o.state, 0) = 0"
                " ORDER BY e.id LIMIT ?",
                &s->load)) {
        gerr_set(err, "%s: %s", path, sqlite3_errmsg(s->db));
        goto fail;
    }
    if (start_checkpointer(s, path, err) != 0)
        goto fail;
    return s;
fail:
    spool_close(s);
    return NULL;
}

void
spool_close(struct spool *s)
{
    if (s == NULL)
        return;
    if (s->ck_started) {
        pthread_mutex_lock(&s->ck_mu);
        s->ck_stop = true;
        pthread_cond_signal(&s->ck_cv);
        pthread_mutex_unlock(&s->ck_mu);
        pthread_join(s->ck_thread, NULL);
    }
    sqlite3_close(s->ck_db);
    if (s->ck_started) {
        pthread_mutex_destroy(&s->ck_mu);
        pthread_cond_destroy(&s->ck_cv);
    }
    sqlite3_finalize(s->sync_full);
    sqlite3_finalize(s->sync_normal);
    sqlite3_finalize(s->begin);
    sqlite3_finalize(s->commit);
    sqlite3_finalize(s->rollback);
    sqlite3_finalize(s->insert);
    sqlite3_finalize(s->finish);
    sqlite3_finalize(s->load);
    sqlite3_close(s->db);
    if (s->lock_fd >= 0)
        close(s->lock_fd);
    free(s);
}

static int
step_done(sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int
spool_begin(struct spool *s, bool durable)
{
    if (durable != s->durable) {
        if (step_done(durable ? s->sync_full : s->sync_normal) != 0)
            return -1;
        s->durable = durable;
    }
    return step_done(s->begin);
}

int
spool_commit(struct spool *s)
{
    return step_done(s->commit);
}

void
spool_rollback(struct spool *s)
{
    (void)step_done(s->rollback);
}

static void
bind_text(sqlite3_stmt *st, int i, const char *v)
{
    if (v == NULL)
        sqlite3_bind_null(st, i);
    else
        sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
}

int
spool_insert(struct spool *s, struct spool_event *ev)
{
    sqlite3_stmt *st = s->insert;
    int rc;

    sqlite3_bind_double(st, 1, ev->received_at);
    bind_text(st, 2, ev->type);
    bind_text(st, 3, ev->contact);
    bind_text(st, 4, ev->webhook_id);
    bind_text(st, 5, ev->request_id);
    bind_text(st, 6, ev->remote_addr);
    sqlite3_bind_int(st, 7, ev->batch_index);
    sqlite3_bind_int(st, 8, ev->batch_size);
    sqlite3_bind_text(st, 9, ev->json, (int)ev->len, SQLITE_STATIC);
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    if (rc == 0)
        ev->id = sqlite3_last_insert_rowid(s->db);
    return rc;
}

int
spool_finish(struct spool *s, int64_t id, bool ok, const char *error)
{
    sqlite3_stmt *st = s->finish;
    int rc;

    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, ok ? SPOOL_DONE : SPOOL_FAILED);
    bind_text(st, 3, ok ? NULL : error);
    sqlite3_bind_double(st, 4, util_now());
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    return rc;
}

static char *
col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);

    return t ? xstrndup((const char *)t, (size_t)sqlite3_column_bytes(st, i))
             : NULL;
}

int
spool_load(struct spool *s, int64_t after, int limit, spool_load_fn fn,
           void *arg)
{
    sqlite3_stmt *st = s->load;
    int n = 0, rc;

    sqlite3_bind_int64(st, 1, after);
    sqlite3_bind_int(st, 2, limit);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct spool_event *ev = xcalloc(1, sizeof(*ev));

        ev->id = sqlite3_column_int64(st, 0);
        ev->received_at = sqlite3_column_double(st, 1);
        ev->type = col_text(st, 2);
        ev->contact = col_text(st, 3);
        ev->webhook_id = col_text(st, 4);
        ev->request_id = col_text(st, 5);
        ev->remote_addr = col_text(st, 6);
        ev->batch_index = sqlite3_column_int(st, 7);
        ev->batch_size = sqlite3_column_int(st, 8);
        ev->attempts = sqlite3_column_int(st, 9);
        ev->json = col_text(st, 10);
        ev->len = (size_t)sqlite3_column_bytes(st, 10);
        if (fn(arg, ev) != 0) {
            spool_event_free(ev);
            break;
        }
        n++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : -1;
}

int64_t
spool_count(struct spool *s, enum spool_state state)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT count(*) FROM events e"
                           " LEFT JOIN outcomes o ON o.id = e.id"
                           " WHERE coalesce(o.state, 0) = ?",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int(st, 1, state);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return n;
}

const char *
spool_errmsg(struct spool *s)
{
    return sqlite3_errmsg(s->db);
}

void
spool_event_free(struct spool_event *ev)
{
    if (ev == NULL)
        return;
    free(ev->type);
    free(ev->contact);
    free(ev->webhook_id);
    free(ev->request_id);
    free(ev->remote_addr);
    free(ev->json);
    free(ev);
}
