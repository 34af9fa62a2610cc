/* config.c - options from the command line and GRWHD_* variables. */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "server.h"

enum opt_kind {
    OPT_STR,
    OPT_INT,        /* long, with bounds */
    OPT_SIZE,       /* bytes; K, M, G suffixes (powers of 1024) */
    OPT_SEC,        /* seconds, fractions allowed */
    OPT_SECRET,     /* repeatable */
    OPT_LEVEL,
    OPT_FORMAT,
    OPT_FLAG,
};

struct opt {
    const char *name;
    enum opt_kind kind;
    size_t off;
    long min, max;
    const char *arg;
    const char *help;
};

#define OFF(f) offsetof(struct config, f)

static const struct opt opts[] = {
    {"script", OPT_STR, OFF(script), 0, 0, "FILE", "Lua handler script"},
    {"listen", OPT_STR, OFF(listen), 0, 0, "ADDR:PORT",
     "webhook listener (default 127.0.0.1:8080)"},
    {"tls-cert", OPT_STR, OFF(tls_cert), 0, 0, "FILE",
     "PEM certificate: serve HTTPS only"},
    {"tls-key", OPT_STR, OFF(tls_key), 0, 0, "FILE", "PEM private key"},
    {"path", OPT_STR, OFF(path), 0, 0, "PATH",
     "only this URL path is the webhook (default: any)"},
    {"secret-param", OPT_STR, OFF(secret_param), 0, 0, "NAME",
     "query parameter carrying the secret (default secret)"},
    {"secret", OPT_SECRET, 0, 0, 0, "S", "accepted secret (repeatable)"},
    {"secret-file", OPT_STR, OFF(secret_file), 0, 0, "FILE",
     "accepted secrets, one per line"},
    {"spool", OPT_STR, OFF(spool), 0, 0, "FILE",
     "SQLite spool (default grwhd-spool.db)"},
    {"workers", OPT_INT, OFF(workers), 1, 256, "N",
     "Lua worker threads (default: CPU count)"},
    {"max-body", OPT_SIZE, OFF(max_body), 64, 1L << 30, "BYTES",
     "largest request body (default 4M)"},
    {"max-attempts", OPT_INT, OFF(max_attempts), 1, 1000, "N",
     "handler attempts before an event is dead (default 8)"},
    {"dedupe-window", OPT_SEC, OFF(dedupe_window), 0, 86400 * 30, "SEC",
     "how long a delivery is remembered; 0 = off (default 86400)"},
    {"keep-done", OPT_SEC, OFF(keep_done), 0, 86400 * 30, "SEC",
     "how long handled events stay in the spool (default 3600)"},
    {"handler-timeout", OPT_SEC, OFF(handler_timeout), 0, 86400, "SEC",
     "wall time of one handler call (default 30)"},
    {"lua-memory", OPT_SIZE, OFF(lua_memory), 1L << 20, LONG_MAX, "BYTES",
     "memory bound of one Lua state (default 256M)"},
    {"max-backlog", OPT_INT, OFF(max_backlog), 1, LONG_MAX, "N",
     "unhandled events before requests get 503 (default 1000000)"},
    {"max-conns", OPT_INT, OFF(max_conns), 4, 100000, "N",
     "open connections in all (default 1024)"},
    {"max-conns-per-ip", OPT_INT, OFF(max_conns_per_ip), 1, 100000, "N",
     "open connections from one address (default 256)"},
    {"conn-timeout", OPT_INT, OFF(conn_timeout), 1, 3600, "SEC",
     "idle time before a connection is closed (default 15)"},
    {"config", OPT_STR, OFF(config), 0, 0, "FILE",
     "read options from FILE: one 'name = value' a line"},
    {"user", OPT_STR, OFF(user), 0, 0, "NAME",
     "when started as root, run as this user once listening"},
    {"admin", OPT_STR, OFF(admin), 0, 0, "ADDR:PORT",
     "health and metrics listener, plain HTTP (default: off)"},
    {"log-level", OPT_LEVEL, 0, 0, 0, "LEVEL",
     "debug, info, warn or error (default info)"},
    {"log-format", OPT_FORMAT, 0, 0, 0, "FORMAT",
     "text or json (default text)"},
    {"json", OPT_FLAG, OFF(json), 0, 0, NULL, "spool dead: print JSON"},
    {"all", OPT_FLAG, OFF(all), 0, 0, NULL, "spool retry: every dead event"},
    {"yes", OPT_FLAG, OFF(yes), 0, 0, NULL, "spool purge-dead: really"},
    {"strict", OPT_FLAG, OFF(strict), 0, 0, NULL,
     "check: exit 1 on warnings too (for CI)"},
    {"help", OPT_FLAG, OFF(help), 0, 0, NULL, "this text"},
    {"version", OPT_FLAG, OFF(version), 0, 0, NULL, "print the version"},
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void
config_defaults(struct config *c)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    memset(c, 0, sizeof(*c));
    c->listen = "127.0.0.1:8080";
    c->secret_param = "secret";
    c->spool = "grwhd-spool.db";
    c->workers = n > 0 ? n : 1;
    c->max_body = 4L << 20;
    c->max_attempts = 8;
    c->dedupe_window = 86400;
    c->keep_done = 3600;
    c->handler_timeout = 30;
    c->lua_memory = 256L << 20;
    c->max_backlog = 1000000;
    c->max_conns = 1024;
    c->max_conns_per_ip = 256;
    c->conn_timeout = 15;
    c->log_level = LOG_INFO;
    c->log_format = LOG_FORMAT_TEXT;
}

static const struct opt *
find_opt(const char *name, size_t len)
{
    for (size_t i = 0; i < NOPTS; i++)
        if (strlen(opts[i].name) == len &&
            strncmp(opts[i].name, name, len) == 0)
            return &opts[i];
    return NULL;
}

static int
parse_long(const char *v, long *out, int size_suffix)
{
    char *end;
    long n;

    errno = 0;
    n = strtol(v, &end, 10);
    if (errno != 0 || end == v)
        return -1;
    if (size_suffix && n < 0)
        return -1;
    if (size_suffix && *end != '\0') {
        long mul = 1;
        switch (toupper((unsigned char)*end)) {
        case 'K': mul = 1L << 10; break;
        case 'M': mul = 1L << 20; break;
        case 'G': mul = 1L << 30; break;
        default: return -1;
        }
        end++;
        if (n > LONG_MAX / mul)
            return -1;
        n *= mul;
    }
    if (*end != '\0')
        return -1;
    *out = n;
    return 0;
}

static int
set_opt(struct config *c, const struct opt *o, const char *v, const char *src,
        struct gerr *err)
{
    char *base = (char *)c;
    long n;
    double d;
    char *end;

    switch (o->kind) {
    case OPT_STR:
        if (v[0] == '\0')
            goto bad;
        *(const char **)(base + o->off) = v;
        return 0;
    case OPT_INT:
    case OPT_SIZE:
        if (parse_long(v, &n, o->kind == OPT_SIZE) != 0 || n < o->min ||
            n > o->max)
            goto bad;
        *(long *)(base + o->off) = n;
        return 0;
    case OPT_SEC:
        errno = 0;
        d = strtod(v, &end);
        if (errno != 0 || end == v || *end != '\0' || !isfinite(d) ||
            d < (double)o->min || d > (double)o->max)
            goto bad;
        *(double *)(base + o->off) = d;
        return 0;
    case OPT_SECRET:
        if (v[0] == '\0')
            goto bad;
        if (c->nsecrets == GRWHD_CONFIG_SECRETS_MAX) {
            gerr_set(err, "%s: more than %d secrets", src,
                     GRWHD_CONFIG_SECRETS_MAX);
            return -1;
        }
        c->secrets[c->nsecrets++] = v;
        return 0;
    case OPT_LEVEL:
        if (log_level_parse(v, &c->log_level) != 0)
            goto bad;
        return 0;
    case OPT_FORMAT:
        if (strcmp(v, "text") == 0)
            c->log_format = LOG_FORMAT_TEXT;
        else if (strcmp(v, "json") == 0)
            c->log_format = LOG_FORMAT_JSON;
        else
            goto bad;
        return 0;
    case OPT_FLAG:
        *(bool *)(base + o->off) = true;
        return 0;
    }
bad:
    /* Never echo a secret's value back. */
    gerr_set(err, "%s: bad value '%s'", src,
             o->kind == OPT_SECRET ? "(hidden)" : v);
    return -1;
}

/* GRWHD_MAX_BODY for max-body. */
static void
env_name(const char *opt, char *out, size_t cap)
{
    size_t o = (size_t)snprintf(out, cap, "GRWHD_");

    for (; *opt && o + 1 < cap; opt++)
        out[o++] = *opt == '-' ? '_' : (char)toupper((unsigned char)*opt);
    out[o] = '\0';
}

static int
read_env(struct config *c, struct gerr *err)
{
    for (size_t i = 0; i < NOPTS; i++) {
        char name[64];
        const char *v;

        if (opts[i].kind == OPT_FLAG)
            continue;
        env_name(opts[i].name, name, sizeof(name));
        v = getenv(name);
        if (v == NULL)
            continue;
        /* An empty variable counts as unset, but for the secrets: one
         * meant to be set and left empty would open the door. */
        if (v[0] == '\0') {
            if (strcmp(opts[i].name, "secret") != 0 &&
                strcmp(opts[i].name, "secret-file") != 0)
                continue;
            gerr_set(err, "%s is set but empty", name);
            return -1;
        }
        if (set_opt(c, &opts[i], v, name, err))
            return -1;
    }
    return 0;
}

static char *
trim(char *s)
{
    char *e;

    while (*s == ' ' || *s == '\t')
        s++;
    e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
                     e[-1] == '\r'))
        *--e = '\0';
    return s;
}

/*
 * One option a line, `name = value`, names as on the command line without
 * the dashes; blank lines and lines starting with '#' are skipped.
 */
static int
read_file(struct config *c, const char *path, struct gerr *err)
{
    char line[4096], src[600];
    int lineno = 0, rc = 0;
    FILE *f = fopen(path, "r");

    if (f == NULL) {
        gerr_set(err, "--config %s: %s", path, strerror(errno));
        return -1;
    }
    while (rc == 0 && fgets(line, sizeof(line), f) != NULL) {
        char *name = trim(line), *eq, *value;
        const struct opt *o;

        lineno++;
        snprintf(src, sizeof(src), "%.500s:%d", path, lineno);
        if (*name == '\0' || *name == '#')
            continue;
        eq = strchr(name, '=');
        if (eq == NULL) {
            gerr_set(err, "%s: want 'name = value'", src);
            rc = -1;
            break;
        }
        *eq = '\0';
        value = trim(eq + 1);
        name = trim(name);
        o = find_opt(name, strlen(name));
        if (o == NULL || o->kind == OPT_FLAG ||
            strcmp(o->name, "config") == 0) {
            gerr_set(err, "%s: unknown option '%.100s'", src, name);
            rc = -1;
            break;
        }
        c->owned = xrealloc(c->owned, (size_t)(c->nowned + 1) *
                                          sizeof(*c->owned));
        c->owned[c->nowned] = xstrdup(value);
        rc = set_opt(c, o, c->owned[c->nowned++], src, err);
    }
    explicit_bzero(line, sizeof(line));
    fclose(f);
    return rc;
}

/* --config is looked for first: the file is the lowest layer. */
static const char *
find_config(int argc, char **argv)
{
    const char *path = getenv("GRWHD_CONFIG");

    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
        else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[i + 1];
    }
    return path != NULL && path[0] != '\0' ? path : NULL;
}

/* Values whose form can be checked before anything starts, so a typo is
 * a usage error (exit 2) rather than a failure at start. */
static int
check_values(const struct config *c, struct gerr *err)
{
    struct sockaddr_storage ss;
    struct gerr why;

    if (c->listen != NULL && server_parse_addr(c->listen, &ss, &why) != 0) {
        gerr_set(err, "--listen: %s", why.msg);
        return -1;
    }
    if (c->admin != NULL && server_parse_addr(c->admin, &ss, &why) != 0) {
        gerr_set(err, "--admin: %s", why.msg);
        return -1;
    }
    if (c->path != NULL && c->path[0] != '/') {
        gerr_set(err, "--path: '%s' must start with '/'", c->path);
        return -1;
    }
    return 0;
}

int
config_parse(struct config *c, int argc, char **argv, struct gerr *err)
{
    const char *file = find_config(argc, argv);
    int env_secrets, file_secrets;

    if (file != NULL && read_file(c, file, err) != 0)
        return -1;
    file_secrets = c->nsecrets;
    if (read_env(c, err) != 0)
        return -1;
    /* Secrets from the environment replace those from the file. */
    if (c->nsecrets > file_secrets && file_secrets > 0) {
        memmove(c->secrets, c->secrets + file_secrets,
                (size_t)(c->nsecrets - file_secrets) * sizeof(char *));
        c->nsecrets -= file_secrets;
    }
    env_secrets = c->nsecrets;      /* from the file or the environment */
    c->args = calloc((size_t)argc + 1, sizeof(char *));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *eq, *v;
        const struct opt *o;
        char src[80];

        if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
            c->args[c->nargs++] = a;
            continue;
        }
        eq = strchr(a + 2, '=');
        o = find_opt(a + 2, eq ? (size_t)(eq - a - 2) : strlen(a + 2));
        if (o == NULL) {
            gerr_set(err, "unknown option '%.*s' (see --help)",
                     eq ? (int)(eq - a) : (int)strlen(a), a);
            return -1;
        }
        snprintf(src, sizeof(src), "--%s", o->name);
        if (o->kind == OPT_FLAG) {
            if (eq != NULL) {
                gerr_set(err, "%s takes no value", src);
                return -1;
            }
            v = "1";
        } else if (eq != NULL) {
            v = eq + 1;
        } else if (i + 1 < argc) {
            v = argv[++i];
        } else {
            gerr_set(err, "%s needs a value", src);
            return -1;
        }
        /* Secrets on the command line replace those from GRWHD_SECRET. */
        if (o->kind == OPT_SECRET && env_secrets > 0) {
            c->nsecrets = 0;
            env_secrets = 0;
        }
        if (set_opt(c, o, v, src, err) != 0)
            return -1;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        gerr_set(err, "--tls-cert and --tls-key go together");
        return -1;
    }
    return check_values(c, err);
}

void
config_free(struct config *c)
{
    free(c->args);
    c->args = NULL;
    for (int i = 0; i < c->nowned; i++) {
        explicit_bzero(c->owned[i], strlen(c->owned[i]));
        free(c->owned[i]);
    }
    free(c->owned);
    c->owned = NULL;
    c->nowned = 0;
}

void
config_usage(FILE *out)
{
    for (size_t i = 0; i < NOPTS; i++) {
        char left[64];

        snprintf(left, sizeof(left), "--%s%s%s", opts[i].name,
                 opts[i].arg ? " " : "", opts[i].arg ? opts[i].arg : "");
        fprintf(out, "  %-28s %s\n", left, opts[i].help);
    }
}
