/* main.c - command line, signals, and the wiring of the daemon. */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "auth.h"
#include "batch.h"
#include "config.h"
#include "dispatch.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "spool.h"
#include "spoolcmd.h"
#include "tls.h"
#include "watch.h"
#include "../lua/runtime.h"
#include "../lua/types.h"

/* Events each worker holds in memory; the rest wait in the spool. */
#define GRWHD_QUEUE_PER_WORKER 1024
/* Largest payload file feed reads. */
#define GRWHD_FEED_MAX (64L << 20)
/* How long shutdown waits for requests whose events are being stored. */
#define GRWHD_DRAIN_SECONDS 5.0
/* How often the script's folder is looked at for changes. */
#define GRWHD_WATCH_TICK_NS (500L * 1000 * 1000)
/* Beyond --handler-timeout, how long shutdown waits for a handler. */
#define GRWHD_STOP_GRACE 5.0

static void
usage(FILE *out)
{
    fprintf(out,
            "usage: grwhd [serve] --script FILE [options]   run the receiver\n"
            "       grwhd check --script FILE [--strict]   compile the "
            "script, list the types it handles\n"
            "       grwhd feed --script FILE [PAYLOAD|-]... run payloads "
            "through the handlers now\n"
            "       grwhd spool --spool FILE stats|dead [--json]|retry ID...|"
            "retry --all|purge-dead --yes\n"
            "       grwhd new [FILE]                        write a starter "
            "handler script\n"
            "       grwhd --help | --version\n\noptions:\n");
    config_usage(out);
}

static int
load_secrets(const struct config *c, struct auth *a, struct gerr *err)
{
    auth_init(a);
    for (int i = 0; i < c->nsecrets; i++)
        if (auth_add(a, c->secrets[i], strlen(c->secrets[i]), err) != 0)
            return -1;
    if (c->secret_file != NULL && auth_add_file(a, c->secret_file, err) != 0)
        return -1;
    if (c->secret_file != NULL) {
        struct stat st;

        /* Writable by all, anyone could add a secret of their own. */
        if (stat(c->secret_file, &st) == 0 && (st.st_mode & (S_IROTH |
                                                             S_IWOTH)))
            log_msg_str(LOG_WARN, "every user may read or write the secret "
                        "file (chmod o-rw)", "file", c->secret_file);
    }
    /* Pasted into the URL as it is, such a secret gets 403s, which
     * GetResponse never retries. */
    if (a->need_encoding > 0) {
        struct log_line l;

        if (log_begin(&l, LOG_WARN, "a secret holds characters that must be "
                                    "percent-encoded in the webhook URL; "
                                    "use only A-Z a-z 0-9 - . _ ~")) {
            log_int(&l, "secrets", (long long)a->need_encoding);
            log_end(&l);
        }
    }
    return 0;
}

static struct lrt_conf
lua_conf(const struct config *c)
{
    struct lrt_conf lc = {
        .script = c->script,
        .handler_timeout = c->handler_timeout,
        .memory_limit = (size_t)c->lua_memory,
    };
    return lc;
}

/*
 * Loads the script once here first, so a broken version is reported once
 * (with file:line) and never reaches the workers; a good one makes each
 * worker build its own fresh state between events.
 */
static void
reload(const struct config *c, const struct lrt_conf *lc, struct dispatch *d,
       const char *why)
{
    struct gerr err;
    struct lrt *trial = lrt_new(lc, -1, &err);
    struct log_line l;

    metrics_script_reload(trial != NULL);
    if (trial == NULL) {
        if (log_begin(&l, LOG_ERROR, "script reload failed, old one kept")) {
            log_str(&l, "why", why);
            log_str(&l, "script", c->script);
            log_str(&l, "error", err.msg);
            log_end(&l);
        }
        return;
    }
    lrt_free(trial);
    log_msg_str(LOG_INFO, "reloading script", "why", why);
    dispatch_reload(d);
}

/*
 * Becomes user (when root): the spool's files change hands first, so the
 * daemon can still write them, and SQLite can recreate its side files.
 */
static int
drop_privileges(const char *user, const char *spool, struct gerr *err)
{
    static const char *const sides[] = {"", "-wal", "-shm", ".lock"};
    struct passwd *pw;
    char path[4096];

    if (geteuid() != 0) {
        gerr_set(err, "--user needs grwhd to start as root");
        return -1;
    }
    pw = getpwnam(user);
    if (pw == NULL) {
        gerr_set(err, "no user '%s'", user);
        return -1;
    }
    for (size_t i = 0; i < sizeof(sides) / sizeof(sides[0]); i++) {
        snprintf(path, sizeof(path), "%s%s", spool, sides[i]);
        if (chown(path, pw->pw_uid, pw->pw_gid) != 0 && errno != ENOENT) {
            gerr_set(err, "%s: %s", path, strerror(errno));
            return -1;
        }
    }
    if (initgroups(pw->pw_name, pw->pw_gid) != 0 ||
        setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
        gerr_set(err, "cannot become %s: %s", user, strerror(errno));
        return -1;
    }
    if (setuid(0) == 0) {
        gerr_set(err, "could regain root after dropping it");
        return -1;
    }
    log_msg_str(LOG_INFO, "running as", "user", user);
    return 0;
}

static void
reload_tls(const struct config *c)
{
    struct gerr err;
    bool ok;

    if (c->tls_cert == NULL)
        return;
    ok = tls_load(c->tls_cert, c->tls_key, &err) == 0;
    metrics_tls_reload(ok);
    if (ok)
        log_msg_str(LOG_INFO, "TLS certificate reloaded", "cert",
                    c->tls_cert);
    else
        log_msg_str(LOG_ERROR, "TLS reload failed, old certificate kept",
                    "error", err.msg);
}

static int
serve(struct config *c)
{
    struct gerr err = {{0}};
    struct auth *auth = xcalloc(1, sizeof(*auth));
    struct lrt_conf lc = lua_conf(c);
    struct spool *sp;
    struct intake *in = NULL;
    struct dispatch *d = NULL;
    struct server *srv = NULL;
    struct admin *adm = NULL;
    sigset_t sigs;
    uint64_t watched, seen;
    int sig, rc = 1;

    if (load_secrets(c, auth, &err) != 0) {
        log_msg_str(LOG_ERROR, "cannot load secrets", "error", err.msg);
        free(auth);
        return 1;
    }
    if (auth_open(auth))
        log_msg(LOG_WARN, "NO SECRET CONFIGURED: every request is accepted; "
                          "set --secret, --secret-file or GRWHD_SECRET");
    if (c->tls_cert == NULL)
        log_msg(LOG_WARN, "plain HTTP: GetResponse needs HTTPS; use "
                          "--tls-cert and --tls-key (or a TLS proxy)");

    /* Signals go to the main thread only; every other thread blocks them. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    sp = spool_open(c->spool, &err);
    if (sp == NULL) {
        log_msg_str(LOG_ERROR, "cannot open spool", "error", err.msg);
        free(auth);
        return 1;
    }
    {
        struct intake_conf ic = {
            .max_backlog = c->max_backlog,
            .max_attempts = (int)c->max_attempts,
            .dedupe_window = c->dedupe_window,
            .keep_done = c->keep_done,
        };
        in = intake_start(sp, &ic, &err);
    }
    if (in == NULL) {
        spool_close(sp);
        log_msg_str(LOG_ERROR, "cannot start intake", "error", err.msg);
        free(auth);
        return 1;
    }
    {
        struct server_conf sc = {
            .listen = c->listen,
            .tls_cert = c->tls_cert,
            .tls_key = c->tls_key,
            .path = c->path,
            .secret_param = c->secret_param,
            .auth = auth,
            .max_body = (size_t)c->max_body,
            .dedupe = c->dedupe_window > 0,
            .threads = c->workers > 4 ? 4 : (unsigned)c->workers,
            .max_conns = (unsigned)c->max_conns,
            .max_conns_per_ip = (unsigned)c->max_conns_per_ip,
            .conn_timeout = (unsigned)c->conn_timeout,
            .intake = in,
        };
        srv = server_start(&sc, &err);
    }
    if (srv == NULL) {
        log_msg_str(LOG_ERROR, "cannot start listener", "error", err.msg);
        goto out;
    }
    if (c->admin != NULL) {
        struct admin_conf ac = {
            .listen = c->admin,
            .spool = c->spool,
            .intake = in,
            .server = &srv,
        };
        adm = admin_start(&ac, &err);
        if (adm == NULL) {
            log_msg_str(LOG_ERROR, "cannot start admin listener", "error",
                        err.msg);
            goto out;
        }
    }
    /* Listening sockets are bound: root is no longer needed. */
    if (c->user != NULL && drop_privileges(c->user, c->spool, &err) != 0) {
        log_msg_str(LOG_ERROR, "cannot switch user", "error", err.msg);
        goto out;
    }
    {
        struct dispatch_conf dc = {
            .workers = (int)c->workers,
            .queue_cap = GRWHD_QUEUE_PER_WORKER,
            .lua = &lc,
            .start = intake_started,
            .done = intake_complete,
            .done_arg = in,
        };
        d = dispatch_start(&dc, &err);
    }
    if (d == NULL) {
        log_msg_str(LOG_ERROR, "cannot load script", "error", err.msg);
        goto out;
    }
    intake_set_dispatch(in, d);
    {
        struct log_line l;
        if (log_begin(&l, LOG_INFO, "listening")) {
            log_str(&l, "addr", c->listen);
            if (c->admin)
                log_str(&l, "admin", c->admin);
            log_str(&l, "tls", c->tls_cert ? "on" : "off");
            log_int(&l, "secrets", (long long)auth->n);
            log_str(&l, "script", c->script);
            log_str(&l, "spool", c->spool);
            log_int(&l, "workers", c->workers);
            log_int(&l, "backlog", (long long)intake_backlog(in));
            log_str(&l, "version", GRWHD_VERSION);
            log_end(&l);
        }
    }
    watched = seen = watch_fingerprint(c->script);
    for (;;) {
        struct timespec tick = {0, GRWHD_WATCH_TICK_NS};

        sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig < 0 && c->handler_timeout > 0)
            dispatch_watch(d, c->handler_timeout + GRWHD_STOP_GRACE);
        if (sig < 0) {
            /* Reload once a change has held still for a tick: editors
             * and git write in several steps. */
            uint64_t now = watch_fingerprint(c->script);

            if (now != watched && now == seen) {
                watched = now;
                reload(c, &lc, d, "script changed");
            }
            seen = now;
            continue;
        }
        if (sig == SIGHUP) {
            /* The quick ones first: a script's top level may take long. */
            reload_tls(c);
            if (c->secret_file != NULL) {
                struct auth fresh;

                if (load_secrets(c, &fresh, &err) != 0) {
                    log_msg_str(LOG_ERROR, "secret reload failed, old "
                                "secrets kept", "error", err.msg);
                } else if (!auth_same(&fresh, auth)) {
                    struct log_line l;

                    server_set_auth(srv, &fresh);
                    *auth = fresh;
                    if (log_begin(&l, LOG_INFO, "secrets reloaded")) {
                        log_int(&l, "secrets", (long long)auth->n);
                        log_end(&l);
                    }
                }
            }
            reload(c, &lc, d, "SIGHUP");
            watched = seen = watch_fingerprint(c->script);
            continue;
        }
        log_msg_str(LOG_INFO, "shutting down", "signal", strsignal(sig));
        break;
    }
    rc = 0;
out:
    admin_stop(adm);
    server_stop(srv, GRWHD_DRAIN_SECONDS);
    intake_flush(in);
    server_free(srv);
    intake_set_dispatch(in, NULL);
    if (!dispatch_stop(d, c->handler_timeout + GRWHD_STOP_GRACE)) {
        /* Their events stay running in the spool and run again later. */
        log_msg(LOG_WARN, "handlers still running past their timeout; "
                          "exiting without them");
        intake_flush(in);
        _exit(rc);
    }
    tls_cleanup();
    free(auth);
    {
        int64_t left;

        intake_flush(in);       /* the last outcomes count too */
        left = intake_backlog(in);
        intake_stop(in);
        if (rc == 0) {
            struct log_line l;

            /* Unhandled events stay in the spool for the next start. */
            if (log_begin(&l, LOG_INFO, "stopped")) {
                log_int(&l, "unhandled_in_spool", (long long)left);
                log_end(&l);
            }
        }
    }
    return rc;
}

/* Names come from the script: control bytes are shown, not sent to the
 * terminal. */
static void
put_clean(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;

        if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\x%02x", c);
        else
            fputc(c, f);
    }
}

static void
print_warning(void *arg, bool serious, const char *msg)
{
    int *warnings = arg;

    fprintf(stderr, "%s: ", serious ? "warning" : "note");
    put_clean(stderr, msg);
    fputc('\n', stderr);
    if (serious)
        (*warnings)++;
}

static int
check(struct config *c)
{
    struct gerr err;
    struct lrt_conf lc = lua_conf(c);
    struct lrt *rt = lrt_new(&lc, 0, &err);
    struct types_entry *e;
    size_t n, handlers = 0;
    int warnings = 0;

    if (rt == NULL) {
        fprintf(stderr, "grwhd: %s\n", err.msg);
        return 1;
    }
    n = types_entries(rt, &e);
    printf("%s: ok; handles:", c->script);
    for (size_t i = 0; i < n; i++) {
        if (e[i].kind != NULL)
            continue;   /* not a function: the warnings say so */
        putchar(' ');
        put_clean(stdout, e[i].name);
        handlers++;
    }
    printf("%s\n", handlers ? "" : " nothing");
    fflush(stdout);
    types_entries_free(e, n);
    types_check_script(rt, print_warning, &warnings);
    lrt_free(rt);
    if (c->strict && warnings > 0) {
        fprintf(stderr, "grwhd: %d warning%s, and --strict\n", warnings,
                warnings == 1 ? "" : "s");
        return 1;
    }
    return 0;
}

/* Writes a starter script with one commented function per known type. */
static int
new_script(const struct config *c)
{
    const char *path = c->nargs > 0 ? c->args[0] : "handler.lua";
    FILE *f;
    int fd;

    if (c->nargs > 1) {
        fprintf(stderr, "grwhd: new takes one file name\n");
        return 2;
    }
    /* "-" is standard output, as for feed's payloads. */
    if (strcmp(path, "-") == 0)
        fd = dup(STDOUT_FILENO);
    else
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0 || (f = fdopen(fd, "w")) == NULL) {
        fprintf(stderr, "grwhd: %s: %s%s\n", path, strerror(errno),
                errno == EEXIST ? " (not overwritten)" : "");
        if (fd >= 0)
            close(fd);
        return 1;
    }
    fputs("-- A grwhd handler: grwhd calls on.<type>(ev, meta) once per "
          "event.\n"
          "-- ev is the event's JSON as a table, meta has id, attempt, "
          "type, ...\n"
          "-- Raising an error fails the attempt; it is retried later.\n"
          "-- Reference: docs/lua.md (installed in share/doc/grwhd).\n"
          "-- Try it: grwhd feed --script THIS_FILE payload.json\n"
          "local on = {}\n\n", f);
    for (int i = 0; types_known[i]; i++) {
        /* Account-level events carry no contact. */
        if (strncmp(types_known[i], "contact_", 8) != 0)
            fprintf(f,
                    "-- function on.%s(ev, meta)\n"
                    "--   grwhd.log.info(\"%s\", { at = ev.event and "
                    "ev.event.occurredAt })\n"
                    "-- end\n\n",
                    types_known[i], types_known[i]);
        else
            fprintf(f,
                    "-- function on.%s(ev, meta)\n"
                    "--   local c = type(ev.contact) == \"table\" and "
                    "ev.contact or {}\n"
                    "--   grwhd.log.info(\"%s\", { contact = c.contactId })\n"
                    "-- end\n\n",
                    types_known[i], types_known[i]);
    }
    fputs("-- Any type without its own function, including new ones.\n"
          "function on.default(ev, meta)\n"
          "  grwhd.log.info(\"event\", { type = meta.type })\n"
          "end\n\n"
          "return on\n", f);
    if (fclose(f) != 0) {
        fprintf(stderr, "grwhd: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (strcmp(path, "-") != 0)
        printf("wrote %s; try: grwhd check --script %s\n", path, path);
    return 0;
}

static char *
slurp(const char *path, size_t *len, struct gerr *err)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t cap = 65536, n = 0;
    char *buf;

    if (f == NULL) {
        gerr_set(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    buf = xmalloc(cap);
    for (;;) {
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
        if (n == cap) {
            if (cap >= (size_t)GRWHD_FEED_MAX) {
                gerr_set(err, "%s: larger than %ld bytes", path,
                         GRWHD_FEED_MAX);
                free(buf);
                buf = NULL;
                break;
            }
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
    }
    if (f != stdin)
        fclose(f);
    *len = n;
    return buf;
}

/* Runs every event of one payload; returns how many failed, -1 if bad. */
static int
feed_one(struct lrt *rt, const char *path, int64_t *next_id)
{
    struct gerr err;
    struct batch b;
    size_t len;
    char *body = slurp(path, &len, &err);
    int failed = 0;

    if (body == NULL) {
        fprintf(stderr, "grwhd: %s\n", err.msg);
        return -1;
    }
    if (batch_parse(&b, body, len, &err) != 0) {
        fprintf(stderr, "grwhd: %s: %s\n", path, err.msg);
        batch_free(&b);
        return -1;
    }
    for (size_t i = 0; i < b.n; i++) {
        struct spool_event ev = {
            .id = (*next_id)++,
            .received_at = util_now(),
            .type = b.ev[i].type,
            .contact = b.ev[i].contact,
            .remote_addr = "feed",
            .batch_index = (int)i,
            .batch_size = (int)b.n,
            .json = (char *)b.ev[i].json,
            .len = b.ev[i].len,
        };
        double t0 = util_mono();
        int rc = lrt_call(rt, &ev, &err);
        double ms = (util_mono() - t0) * 1000.0;

        if (rc >= 0) {
            printf("%s %s #%zu type=%s %.3f ms\n", rc == 0 ? "ok  " : "skip",
                   path, i + 1, ev.type[0] ? ev.type : "\"\"", ms);
        } else {
            printf("FAIL %s #%zu type=%s %.3f ms\n%s\n", path, i + 1,
                   ev.type[0] ? ev.type : "\"\"", ms, err.msg);
            failed++;
        }
    }
    batch_free(&b);
    return failed;
}

static int
feed(struct config *c)
{
    struct gerr err;
    struct lrt_conf lc = lua_conf(c);
    struct lrt *rt;
    int64_t id = 1;
    int failed = 0, bad = 0;

    if (c->nargs == 0) {
        fprintf(stderr, "grwhd: feed needs payload files (or - for stdin)\n");
        return 2;
    }
    rt = lrt_new(&lc, 0, &err);
    if (rt == NULL) {
        fprintf(stderr, "grwhd: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < c->nargs; i++) {
        int n = feed_one(rt, c->args[i], &id);
        if (n < 0)
            bad++;
        else
            failed += n;
    }
    lrt_free(rt);
    fflush(stdout);
    return failed || bad ? 1 : 0;
}

/*
 * Whether JSON logs were asked for, read past a bad option: a log shipper
 * that expects JSON lines should get the error as one too.
 */
static bool
wants_json_log(int argc, char **argv)
{
    const char *env = getenv("GRWHD_LOG_FORMAT");
    bool json = env != NULL && strcmp(env, "json") == 0;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--log-format=json") == 0 ||
            (strcmp(argv[i], "--log-format") == 0 && i + 1 < argc &&
             strcmp(argv[i + 1], "json") == 0))
            json = true;
        else if (strncmp(argv[i], "--log-format", 12) == 0)
            json = false;
    }
    return json;
}

int
main(int argc, char **argv)
{
    struct config c;
    struct gerr err;
    const char *cmd = "serve";
    int first = 1, rc;

    if (argc > 1 && strncmp(argv[1], "--", 2) != 0) {
        cmd = argv[1];
        first = 2;
    }
    config_defaults(&c);
    if (config_parse(&c, argc - first, argv + first, &err) != 0) {
        if (wants_json_log(argc, argv)) {
            log_setup(LOG_INFO, LOG_FORMAT_JSON);
            log_msg_str(LOG_ERROR, "bad option", "error", err.msg);
        } else {
            fprintf(stderr, "grwhd: %s\n", err.msg);
        }
        config_free(&c);
        return 2;
    }
    log_setup(c.log_level, c.log_format);
    if (c.help) {
        usage(stdout);
        rc = 0;
    } else if (c.version) {
        printf("grwhd %s\n", GRWHD_VERSION);
        rc = 0;
    } else if (strcmp(cmd, "spool") == 0) {
        rc = spoolcmd_run(&c);
    } else if (strcmp(cmd, "new") == 0 || strcmp(cmd, "init") == 0) {
        rc = new_script(&c);
    } else if (strcmp(cmd, "serve") != 0 && strcmp(cmd, "check") != 0 &&
               strcmp(cmd, "feed") != 0) {
        fprintf(stderr, "grwhd: unknown command '%s' (see --help)\n", cmd);
        rc = 2;
    } else if (c.script == NULL) {
        if (c.log_format == LOG_FORMAT_JSON)
            log_msg_str(LOG_ERROR, "needs --script FILE", "command", cmd);
        else
            fprintf(stderr, "grwhd: %s needs --script FILE\n", cmd);
        rc = 2;
    } else if (strcmp(cmd, "check") == 0) {
        rc = check(&c);
    } else if (strcmp(cmd, "feed") == 0) {
        rc = feed(&c);
    } else if (c.nargs > 0) {
        fprintf(stderr, "grwhd: unexpected argument '%s'\n", c.args[0]);
        rc = 2;
    } else {
        rc = serve(&c);
    }
    config_free(&c);
    return rc;
}
