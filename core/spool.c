/* spool.c - the durable event store (SQLite in WAL mode). */
#include "spool.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <sqlite3.h>

#define SPOOL_SCHEMA_VERSION 1
/* WAL size after which the checkpointer is woken. */
#define SPOOL_CHECKPOINT_BYTES (8 << 20)
/*
 * Page size of a new spool.  A busy spool writes each event twice (into
 * the WAL, then into the database), a write call per page each time;
 * 16 KiB pages take about 5% off the CPU time per event in batches.
 */
#define SPOOL_PAGE_SIZE "16384"

struct spool {
    sqlite3 *db;
    int lock_fd;
    sqlite3_stmt *begin, *commit, *rollback, *insert, *finish, *load;
    sqlite3_stmt *sync_full, *sync_normal;
    sqlite3_stmt *record, *dedupe, *load_due;
    bool durable;           /* synchronous=FULL is in force */
    /* Why the transaction just rolled back failed: the rollback itself
     * replaces SQLite's message with its own. */
    char failure[256];
    /*
     * Checkpoints (copying the WAL into the database file) run on a thread
     * of their own with its own connection, so the writer, which every
     * acknowledgement waits for, never does that copy itself.
     */
    sqlite3 *ck_db;
    pthread_t ck_thread;
    bool ck_started, ck_stop, ck_due;
    int ck_pages;       /* SPOOL_CHECKPOINT_BYTES in this file's pages */
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
    " finished_at REAL,"
    " next_at REAL);"
    "CREATE INDEX IF NOT EXISTS outcomes_due ON outcomes (next_at)"
    " WHERE state = 3;"
    "CREATE INDEX IF NOT EXISTS outcomes_done ON outcomes (finished_at)"
    " WHERE state = 1;"
    /*
     * Delivery keys, one row per commit holding its keys back to back,
     * appended in time order (rowid order is age order) and never looked
     * up here: the daemon keeps the window's keys in memory and reads them
     * back at start.  An index on random keys would make every commit
     * rewrite pages all over it.
     */
    "CREATE TABLE IF NOT EXISTS dedupe ("
    " seq INTEGER PRIMARY KEY,"
    " key BLOB NOT NULL,"
    " seen_at REAL NOT NULL);"
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
    char lp[PATH_MAX + 16], dir[PATH_MAX], real[PATH_MAX];
    const char *base = strrchr(path, '/');
    int n;

    /*
     * The lock is named after the spool's real path, so a symlink (or a
     * relative path) to the same file finds the same lock.  A spool not
     * created yet has no real path; its folder does.
     */
    if (realpath(path, real) != NULL) {
        n = snprintf(lp, sizeof(lp), "%s.lock", real);
    } else {
        n = snprintf(dir, sizeof(dir), "%.*s",
                     base ? (int)(base - path) + (base == path) : 1,
                     base ? path : ".");
        if (n >= (int)sizeof(dir)) {
            gerr_set(err, "spool path too long");
            return -1;
        }
        if (realpath(dir, real) == NULL) {
            gerr_set(err, "%s: %s", dir, strerror(errno));
            return -1;
        }
        n = snprintf(lp, sizeof(lp), "%s/%s.lock", real,
                     base ? base + 1 : path);
    }
    if (n < 0 || n >= (int)sizeof(lp)) {
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
    if (pages >= s->ck_pages) {
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
    sqlite3_stmt *st;
    int page = 4096;

    /* An older spool keeps the page size it was made with. */
    if (sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL) ==
        SQLITE_OK) {
        if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_int(st, 0) > 0)
            page = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);
    }
    s->ck_pages = SPOOL_CHECKPOINT_BYTES / page;
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
    pthread_setname_np(s->ck_thread, "grwhd-checkpt");
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
                     /* Only a new file takes it. */
                     "PRAGMA page_size=" SPOOL_PAGE_SIZE ";"
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
                " finished_at = excluded.finished_at, next_at = NULL",
                &s->finish) ||
        prepare(s,
                "INSERT INTO outcomes (id, state, attempts, last_error,"
                " finished_at, next_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"
                " ON CONFLICT (id) DO UPDATE SET state = excluded.state,"
                " attempts = excluded.attempts,"
                " last_error = coalesce(excluded.last_error, last_error),"
                " finished_at = excluded.finished_at,"
                " next_at = excluded.next_at",
                &s->record) ||
        prepare(s, "INSERT INTO dedupe (key, seen_at) VALUES (?, ?)",
                &s->dedupe) ||
        prepare(s,
                "SELECT e.id, e.received_at, e.type, e.contact, e.webhook_id,"
                " e.request_id, e.remote_addr, e.batch_index, e.batch_size,"
                " o.attempts, e.json"
                " FROM outcomes o JOIN events e ON e.id = o.id"
                " WHERE o.state = 3 AND o.next_at <= ?"
                " ORDER BY o.next_at LIMIT ?",
                &s->load_due) ||
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
    if (sqlite3_exec(s->db, "UPDATE outcomes SET state = 0 WHERE state = 4",
                     NULL, NULL, NULL) != SQLITE_OK) {
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

int64_t
spool_bury(struct spool *s, int max_attempts)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_prepare_v2(s->db,
                           "UPDATE outcomes SET state = 2, finished_at = ?2,"
                           " last_error = 'grwhd stopped during this attempt"
                           " (a crash, a kill, or the handler ended the"
                           " process)' WHERE state = 0 AND attempts >= ?1",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_int(st, 1, max_attempts);
    sqlite3_bind_double(st, 2, util_now());
    if (sqlite3_step(st) == SQLITE_DONE)
        n = sqlite3_changes(s->db);
    sqlite3_finalize(st);
    return n;
}

struct spool *
spool_open_admin(const char *path, struct gerr *err)
{
    struct spool *s = xcalloc(1, sizeof(*s));

    s->lock_fd = -1;
    if (access(path, F_OK) != 0) {
        gerr_set(err, "%s: %s", path, strerror(errno));
        free(s);
        return NULL;
    }
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE, NULL) !=
            SQLITE_OK ||
        sqlite3_exec(s->db, schema, NULL, NULL, NULL) != SQLITE_OK) {
        gerr_set(err, "%s: %s", path,
                 s->db ? sqlite3_errmsg(s->db) : "cannot open");
        spool_close(s);
        return NULL;
    }
    /* The daemon may hold the write lock for a group commit. */
    sqlite3_busy_timeout(s->db, 5000);
    return s;
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
    sqlite3_finalize(s->record);
    sqlite3_finalize(s->dedupe);
    sqlite3_finalize(s->load_due);
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

/* Keeps SQLite's message for spool_errmsg, before a later call (even a
 * finalize) replaces it. */
static void
keep_failure(struct spool *s)
{
    if (s->failure[0] == '\0')
        snprintf(s->failure, sizeof(s->failure), "%s",
                 sqlite3_errmsg(s->db));
}

int
spool_begin(struct spool *s, bool durable)
{
    s->failure[0] = '\0';
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
    if (sqlite3_errcode(s->db) != SQLITE_OK)
        keep_failure(s);
    (void)step_done(s->rollback);
}

int
spool_probe(struct spool *s)
{
    int rc;

    if (spool_begin(s, true) != 0) {
        spool_rollback(s);
        return -1;
    }
    /* Rewrites the header page: a real write and fsync, no data. */
    rc = sqlite3_exec(s->db, "PRAGMA user_version = 1", NULL, NULL, NULL);
    if (rc != SQLITE_OK || spool_commit(s) != 0) {
        spool_rollback(s);
        return -1;
    }
    return 0;
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
    sqlite3_bind_int(st, 2, ok ? SPOOL_DONE : SPOOL_DEAD);
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

struct spool_event *
spool_event_new(const char *const text[SPOOL_TEXTS],
                const size_t len[SPOOL_TEXTS])
{
    size_t size = sizeof(struct spool_event);
    struct spool_event *ev;
    char **slot[SPOOL_TEXTS];
    char *p;

    for (int i = 0; i < SPOOL_TEXTS; i++)
        if (text[i] != NULL)
            size += len[i] + 1;
    ev = xmalloc(size);
    memset(ev, 0, sizeof(*ev));
    slot[SPOOL_TYPE] = &ev->type;
    slot[SPOOL_CONTACT] = &ev->contact;
    slot[SPOOL_WEBHOOK_ID] = &ev->webhook_id;
    slot[SPOOL_REQUEST_ID] = &ev->request_id;
    slot[SPOOL_REMOTE_ADDR] = &ev->remote_addr;
    slot[SPOOL_JSON] = &ev->json;
    p = (char *)(ev + 1);
    for (int i = 0; i < SPOOL_TEXTS; i++) {
        if (text[i] == NULL)
            continue;
        memcpy(p, text[i], len[i]);
        p[len[i]] = '\0';
        *slot[i] = p;
        p += len[i] + 1;
    }
    ev->len = len[SPOOL_JSON];
    return ev;
}

/* Columns: id, received_at, type, contact, webhook_id, request_id,
 * remote_addr, batch_index, batch_size, attempts, json. */
static struct spool_event *
row_event(sqlite3_stmt *st)
{
    /* Column i + 2 holds text i. */
    const char *text[SPOOL_TEXTS];
    size_t len[SPOOL_TEXTS];
    struct spool_event *ev;

    for (int i = 0; i < SPOOL_TEXTS; i++) {
        int col = i == SPOOL_JSON ? 10 : i + 2;

        text[i] = (const char *)sqlite3_column_text(st, col);
        len[i] = (size_t)sqlite3_column_bytes(st, col);
    }
    ev = spool_event_new(text, len);
    ev->id = sqlite3_column_int64(st, 0);
    ev->received_at = sqlite3_column_double(st, 1);
    ev->batch_index = sqlite3_column_int(st, 7);
    ev->batch_size = sqlite3_column_int(st, 8);
    ev->attempts = sqlite3_column_int(st, 9);
    return ev;
}

/* Steps st, giving each row's event to fn; see spool_load. */
static int
feed_rows(sqlite3_stmt *st, spool_load_fn fn, void *arg, int64_t *ids,
          int max_ids)
{
    int n = 0, rc;

    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct spool_event *ev = row_event(st);
        int64_t id = ev->id;

        if (fn(arg, ev) != 0) {
            spool_event_free(ev);
            break;
        }
        if (ids != NULL && n < max_ids)
            ids[n] = id;
        n++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : -1;
}

int
spool_load(struct spool *s, int64_t after, int limit, spool_load_fn fn,
           void *arg)
{
    sqlite3_bind_int64(s->load, 1, after);
    sqlite3_bind_int(s->load, 2, limit);
    return feed_rows(s->load, fn, arg, NULL, 0);
}

/* Runs sql, binding ?1 to a (when not NAN); returns the first column of
 * the first row as an integer, or -1. */
static int64_t
query_int(struct spool *s, const char *sql, double a)
{
    sqlite3_stmt *st = NULL;
    int64_t n = -1;

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK) {
        keep_failure(s);
        return -1;
    }
    if (a == a)
        sqlite3_bind_double(st, 1, a);
    if (sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int64(st, 0);
    else
        keep_failure(s);
    sqlite3_finalize(st);
    return n;
}

int64_t
spool_count(struct spool *s, enum spool_state state)
{
    switch (state) {
    case SPOOL_PENDING:
    case SPOOL_RUNNING:
        /* Pending events have no outcome row, or state 0 or 4. */
        return query_int(s,
                         "SELECT (SELECT count(*) FROM events) -"
                         " (SELECT count(*) FROM outcomes"
                         " WHERE state IN (1, 2, 3))",
                         NAN);
    default:
        return query_int(s, "SELECT count(*) FROM outcomes WHERE state = ?1",
                         (double)state);
    }
}

int64_t
spool_backlog(struct spool *s)
{
    return query_int(s,
                     "SELECT (SELECT count(*) FROM events) -"
                     " (SELECT count(*) FROM outcomes WHERE state IN (1, 2))",
                     NAN);
}

int64_t
spool_requeued(struct spool *s)
{
    /* spool_retry leaves attempts at 0, which no attempt ever does. */
    return query_int(s,
                     "SELECT count(*) FROM outcomes"
                     " WHERE state = 3 AND attempts = 0",
                     NAN);
}

int
spool_stats(struct spool *s, struct spool_stats *st)
{
    sqlite3_stmt *q = NULL;

    memset(st, 0, sizeof(*st));
    st->pending = spool_count(s, SPOOL_PENDING);
    st->scheduled = spool_count(s, SPOOL_SCHEDULED);
    st->dead = spool_count(s, SPOOL_DEAD);
    st->done = spool_count(s, SPOOL_DONE);
    if (st->pending < 0 || st->scheduled < 0 || st->dead < 0 || st->done < 0)
        return -1;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT min(e.received_at) FROM events e"
                           " LEFT JOIN outcomes o ON o.id = e.id"
                           " WHERE coalesce(o.state, 0) NOT IN (1, 2)",
                           -1, &q, NULL) != SQLITE_OK)
        return -1;
    if (sqlite3_step(q) == SQLITE_ROW)
        st->oldest = sqlite3_column_double(q, 0);
    sqlite3_finalize(q);
    return 0;
}

int
spool_record(struct spool *s, int64_t id, enum spool_state state,
             int attempts, const char *error, double next_at)
{
    sqlite3_stmt *st = s->record;
    int rc;

    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, state);
    sqlite3_bind_int(st, 3, attempts);
    bind_text(st, 4, error);
    sqlite3_bind_double(st, 5, util_now());
    if (state == SPOOL_SCHEDULED)
        sqlite3_bind_double(st, 6, next_at);
    else
        sqlite3_bind_null(st, 6);
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int
spool_remember_keys(struct spool *s, const unsigned char *keys, size_t n,
                    double now)
{
    sqlite3_stmt *st = s->dedupe;
    int rc;

    sqlite3_bind_blob(st, 1, keys, (int)(n * GRWHD_DEDUPE_KEY),
                      SQLITE_STATIC);
    sqlite3_bind_double(st, 2, now);
    rc = step_done(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int
spool_remember_key(struct spool *s, const unsigned char *key, double now)
{
    return spool_remember_keys(s, key, 1, now);
}

int
spool_each_key(struct spool *s, double since,
               void (*fn)(void *arg, const unsigned char *key, double seen),
               void *arg)
{
    sqlite3_stmt *st = NULL;
    int n = 0, rc;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT key, seen_at FROM dedupe WHERE seq >="
                           " coalesce((SELECT seq FROM dedupe WHERE seen_at"
                           " >= ?1 ORDER BY seq LIMIT 1), 9223372036854775807)"
                           " ORDER BY seq",
                           -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_double(st, 1, since);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const unsigned char *k = sqlite3_column_blob(st, 0);
        int bytes = sqlite3_column_bytes(st, 0);

        /* A row holds the keys of one transaction, back to back. */
        for (int off = 0; k != NULL && off + GRWHD_DEDUPE_KEY <= bytes;
             off += GRWHD_DEDUPE_KEY) {
            fn(arg, k + off, sqlite3_column_double(st, 1));
            n++;
        }
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? n : -1;
}

int
spool_load_due(struct spool *s, double now, int limit, spool_load_fn fn,
               void *arg)
{
    int64_t ids[256];
    int n;

    if (limit > (int)(sizeof(ids) / sizeof(ids[0])))
        limit = (int)(sizeof(ids) / sizeof(ids[0]));
    sqlite3_bind_double(s->load_due, 1, now);
    sqlite3_bind_int(s->load_due, 2, limit);
    n = feed_rows(s->load_due, fn, arg, ids, limit);
    for (int i = 0; i < n; i++) {
        sqlite3_stmt *st = NULL;

        /* Running, so neither this query nor a refill hands it out again. */
        if (sqlite3_prepare_v2(s->db,
                               "UPDATE outcomes SET state = 4, next_at = NULL"
                               " WHERE id = ?",
                               -1, &st, NULL) != SQLITE_OK)
            return -1;
        sqlite3_bind_int64(st, 1, ids[i]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            sqlite3_finalize(st);
            return -1;
        }
        sqlite3_finalize(st);
    }
    return n;
}

double
spool_next_due(struct spool *s)
{
    sqlite3_stmt *st = NULL;
    double t = 0;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT min(next_at) FROM outcomes WHERE state = 3",
                           -1, &st, NULL) != SQLITE_OK)
        return 0;
    if (sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_type(st, 0) != SQLITE_NULL)
        t = sqlite3_column_double(st, 0);
    sqlite3_finalize(st);
    return t;
}

static int
exec_bound(struct spool *s, const char *sql, double a, int limit)
{
    sqlite3_stmt *st = NULL;
    int rc;

    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return -1;
    sqlite3_bind_double(st, 1, a);
    sqlite3_bind_int(st, 2, limit);
    rc = sqlite3_step(st) == SQLITE_DONE ? sqlite3_changes(s->db) : -1;
    sqlite3_finalize(st);
    return rc;
}

int
spool_prune(struct spool *s, double done_before, double keys_before,
            int limit)
{
    int a, b, c;

    /* Events first, then their outcome rows: the same ids, found again. */
    a = exec_bound(s,
                   "DELETE FROM events WHERE id IN (SELECT id FROM outcomes"
                   " WHERE state = 1 AND finished_at < ?1 LIMIT ?2)",
                   done_before, limit);
    b = exec_bound(s,
                   "DELETE FROM outcomes WHERE id IN (SELECT id FROM outcomes"
                   " WHERE state = 1 AND finished_at < ?1 LIMIT ?2)",
                   done_before, limit);
    c = exec_bound(s,
                   "DELETE FROM dedupe WHERE seq < coalesce((SELECT seq"
                   " FROM dedupe WHERE seen_at >= ?1 ORDER BY seq LIMIT 1),"
                   " 9223372036854775807) AND seq <= (SELECT min(seq) + ?2"
                   " FROM dedupe)",
                   keys_before, limit);
    if (a < 0 || b < 0 || c < 0)
        return -1;
    return a + b + c;
}

int
spool_each_dead(struct spool *s, spool_load_fn fn, void *arg)
{
    sqlite3_stmt *st = NULL;
    int n = 0, rc;

    if (sqlite3_prepare_v2(s->db,
                           "SELECT e.id, e.received_at, e.type, e.contact,"
                           " e.webhook_id, e.request_id, e.remote_addr,"
                           " e.batch_index, e.batch_size, o.attempts, e.json,"
                           " o.last_error"
                           " FROM outcomes o JOIN events e ON e.id = o.id"
                           " WHERE o.state = 2 ORDER BY e.id",
                           -1, &st, NULL) != SQLITE_OK) {
        keep_failure(s);
        return -1;
    }
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        struct spool_event *ev = row_event(st);

        ev->last_error = col_text(st, 11);
        if (fn(arg, ev) != 0) {
            spool_event_free(ev);
            break;
        }
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        keep_failure(s);
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? n : -1;
}

int64_t
spool_retry(struct spool *s, const int64_t *ids, size_t n)
{
    sqlite3_stmt *st = NULL;
    int64_t done = 0;
    /* Due now (0 would read as "nothing scheduled"), with no attempts:
     * see spool_requeued. */
    const char *sql = "UPDATE outcomes SET state = 3, next_at = ?2,"
                      " attempts = 0 WHERE state = 2 AND (?1 IS NULL OR"
                      " id = ?1)";
    double now = util_now();

    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        keep_failure(s);
        return -1;
    }
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        goto fail;
    for (size_t i = 0; ids == NULL ? i < 1 : i < n; i++) {
        if (ids == NULL)
            sqlite3_bind_null(st, 1);
        else
            sqlite3_bind_int64(st, 1, ids[i]);
        sqlite3_bind_double(st, 2, now);
        if (sqlite3_step(st) != SQLITE_DONE)
            goto fail;
        done += sqlite3_changes(s->db);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    st = NULL;
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    return done;
fail:
    keep_failure(s);
    sqlite3_finalize(st);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

int64_t
spool_purge_dead(struct spool *s)
{
    int64_t n;

    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        keep_failure(s);
        return -1;
    }
    if (sqlite3_exec(s->db,
                     "DELETE FROM events WHERE id IN"
                     " (SELECT id FROM outcomes WHERE state = 2)",
                     NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    n = sqlite3_changes(s->db);
    if (sqlite3_exec(s->db, "DELETE FROM outcomes WHERE state = 2", NULL,
                     NULL, NULL) != SQLITE_OK ||
        sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        goto fail;
    return n;
fail:
    keep_failure(s);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

const char *
spool_errmsg(struct spool *s)
{
    return s->failure[0] != '\0' ? s->failure : sqlite3_errmsg(s->db);
}

void
spool_event_free(struct spool_event *ev)
{
    if (ev == NULL)
        return;
    free(ev->last_error);
    free(ev);
}
