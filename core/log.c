/* log.c - levelled logfmt / JSON lines on stderr. */
#include "log.h"
#include "util.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level log_min = LOG_INFO;
static enum log_format log_fmt = LOG_FORMAT_TEXT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void
log_setup(enum log_level min, enum log_format fmt)
{
    log_min = min;
    log_fmt = fmt;
}

bool
log_enabled(enum log_level level)
{
    return level >= log_min;
}

int
log_level_parse(const char *s, enum log_level *out)
{
    for (int i = 0; i <= LOG_ERROR; i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

/* Room kept at the end of a line: an ellipsis and a quote, or the
 * truncated marker; then a brace and \n. */
#define LOG_TAIL 24

static void
put(struct log_line *l, const char *s, size_t n)
{
    size_t room;

    if (l->full || l->len >= sizeof(l->buf) - LOG_TAIL) {
        l->cut = true;
        return;
    }
    room = sizeof(l->buf) - LOG_TAIL - l->len;
    if (n > room) {
        n = room;
        l->cut = true;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void
putc1(struct log_line *l, char c)
{
    put(l, &c, 1);
}

static bool
needs_quotes(const char *s, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
            return true;
    }
    return false;
}

/*
 * Adds n bytes only if all of them fit, so an escape sequence or a UTF-8
 * character is never split when a line runs out of room.
 */
static bool
put_whole(struct log_line *l, const char *s, size_t n)
{
    if (l->full || l->len + n > sizeof(l->buf) - LOG_TAIL) {
        l->cut = true;
        return false;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return true;
}

/*
 * Escapes quotes, backslashes and control bytes; whole UTF-8 characters
 * pass, and a byte that is not part of one becomes U+FFFD, so text and
 * JSON lines alike stay valid UTF-8.
 */
static void
put_escaped(struct log_line *l, const char *s, size_t n)
{
    char tmp[8];

    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *out = tmp;
        size_t on = 2, take = 1;

        switch (c) {
        case '"': out = "\\\""; break;
        case '\\': out = "\\\\"; break;
        case '\n': out = "\\n"; break;
        case '\r': out = "\\r"; break;
        case '\t': out = "\\t"; break;
        default:
            if (c < 0x20 || c == 0x7f) {
                snprintf(tmp, sizeof(tmp), "\\u%04x", c);
                on = 6;
            } else if (c < 0x80) {
                out = s + i;
                on = 1;
            } else {
                size_t ok = util_utf8_valid((const unsigned char *)s + i,
                                            n - i < 4 ? n - i : 4);
                /* The valid prefix ends inside this character or not. */
                take = util_utf8_len(c);
                if (take == 0 || ok < take) {
                    out = "\xef\xbf\xbd";
                    on = 3;
                    take = 1;
                } else {
                    out = s + i;
                    on = take;
                }
            }
        }
        if (!put_whole(l, out, on))
            return;
        i += take;
    }
}

/*
 * Ends a quoted value.  A line that ran out of room ends here too: the
 * reserved tail takes an ellipsis and the quote, so a cut line still
 * parses; nothing more is added to it.
 */
static void
close_quote(struct log_line *l)
{
    if (l->cut) {
        memcpy(l->buf + l->len, "...\"", 4);
        l->len += 4;
        l->full = true;
        return;
    }
    l->buf[l->len++] = '"';
}

/*
 * Whether a field can begin: its key, separator and the first vmin bytes
 * of its value must fit.  A key or a bare value is never written in part
 * (a cut number would read as another number); when a field cannot
 * begin, the line is closed and marked as cut (see log_end).
 */
static bool
room_for(const struct log_line *l, const char *key, size_t vmin)
{
    size_t need = strlen(key) + (log_fmt == LOG_FORMAT_JSON ? 4 : 2) + vmin;

    return l->len + need <= sizeof(l->buf) - LOG_TAIL;
}

static bool
field_fits(struct log_line *l, const char *key, size_t vmin)
{
    if (l->full)
        return false;
    if (!room_for(l, key, vmin)) {
        l->full = l->dropped = true;
        return false;
    }
    return true;
}

/* Keys may come from a script: anything but [A-Za-z0-9_.-] becomes '_'. */
static void
put_key(struct log_line *l, const char *key)
{
    if (log_fmt == LOG_FORMAT_JSON)
        put(l, ",\"", 2);
    else
        putc1(l, ' ');
    for (const char *k = key; *k; k++) {
        char c = *k;
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                     (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                     c == '-';
        putc1(l, plain ? c : '_');
    }
    if (log_fmt == LOG_FORMAT_JSON)
        put(l, "\":", 2);
    else
        putc1(l, '=');
}

bool
log_begin(struct log_line *l, enum log_level level, const char *msg)
{
    char ts[40];
    struct timespec now;
    struct tm tm;
    size_t n;

    l->on = log_enabled(level);
    if (!l->on)
        return false;
    l->level = level;
    l->len = 0;
    l->cut = l->full = l->dropped = false;
    clock_gettime(CLOCK_REALTIME, &now);
    gmtime_r(&now.tv_sec, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03ldZ", now.tv_nsec / 1000000);
    if (log_fmt == LOG_FORMAT_JSON) {
        put(l, "{\"ts\":\"", 7);
        put(l, ts, strlen(ts));
        put(l, "\"", 1);
    } else {
        put(l, "ts=", 3);
        put(l, ts, strlen(ts));
    }
    log_str(l, "level", level_names[level]);
    log_str(l, "msg", msg);
    return true;
}

void
log_strn(struct log_line *l, const char *key, const char *val, size_t n)
{
    bool bare;

    if (!l->on || l->full)
        return;
    if (val == NULL) {
        val = "";
        n = 0;
    }
    /* A bare text value goes whole or quoted, where a cut shows. */
    bare = log_fmt == LOG_FORMAT_TEXT && !needs_quotes(val, n) &&
           room_for(l, key, n);
    /* A short value is shown whole or not at all, a long one may be cut
     * (ending in ..."), so that most of it is still seen. */
    if (!field_fits(l, key, bare ? n : n <= 64 ? n + 2 : 1))
        return;
    put_key(l, key);
    if (bare) {
        put(l, val, n);
        return;
    }
    putc1(l, '"');
    put_escaped(l, val, n);
    close_quote(l);
}

void
log_bare(struct log_line *l, const char *key, const char *val, size_t n)
{
    if (!l->on || !field_fits(l, key, n))
        return;
    put_key(l, key);
    put(l, val, n);
}

void
log_str(struct log_line *l, const char *key, const char *val)
{
    log_strn(l, key, val, val ? strlen(val) : 0);
}

void
log_int(struct log_line *l, const char *key, long long val)
{
    char tmp[32];
    int n;

    if (!l->on)
        return;
    n = snprintf(tmp, sizeof(tmp), "%lld", val);
    log_bare(l, key, tmp, (size_t)n);
}

void
log_num(struct log_line *l, const char *key, double val)
{
    char tmp[48];
    int n;

    if (!l->on)
        return;
    n = snprintf(tmp, sizeof(tmp), "%.3f", val);
    log_bare(l, key, tmp, (size_t)n);
}

void
log_truncated(struct log_line *l)
{
    l->dropped = true;
}

void
log_end(struct log_line *l)
{
    if (!l->on)
        return;
    /* Fields were left out whole: say so (the tail was kept for it). */
    if (l->dropped) {
        const char *m = log_fmt == LOG_FORMAT_JSON ? ",\"truncated\":true"
                                                    : " truncated=true";

        memcpy(l->buf + l->len, m, strlen(m));
        l->len += strlen(m);
    }
    if (log_fmt == LOG_FORMAT_JSON)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    /* One write per line keeps lines from threads whole. */
    (void)!write(STDERR_FILENO, l->buf, l->len);
    l->on = false;
}

void
log_msg(enum log_level level, const char *msg)
{
    struct log_line l;

    if (log_begin(&l, level, msg))
        log_end(&l);
}

void
log_msg_str(enum log_level level, const char *msg, const char *key,
            const char *val)
{
    struct log_line l;

    if (!log_begin(&l, level, msg))
        return;
    log_str(&l, key, val);
    log_end(&l);
}
