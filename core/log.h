/* log.h - levelled logfmt / JSON lines on stderr. */
#ifndef GRWHD_LOG_H
#define GRWHD_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level {
    LOG_DEBUG,
    LOG_INFO,
    LOG_WARN,
    LOG_ERROR,
};

enum log_format {
    LOG_FORMAT_TEXT,
    LOG_FORMAT_JSON,
};

#define GRWHD_LOG_LINE_MAX 4096

/*
 * One line under construction.  Build it with log_begin, add fields, and
 * write it with log_end; all calls are no-ops when the level is off, so
 * callers test nothing and format nothing for a disabled level.
 */
struct log_line {
    bool on;
    bool cut;           /* ran out of room; the rest is dropped */
    bool full;          /* closed after a cut: nothing more is added */
    bool dropped;       /* a whole field did not fit and was left out */
    enum log_level level;
    size_t len;
    char buf[GRWHD_LOG_LINE_MAX];
};

void log_setup(enum log_level min, enum log_format fmt);
bool log_enabled(enum log_level level);
int log_level_parse(const char *s, enum log_level *out);

bool log_begin(struct log_line *l, enum log_level level, const char *msg);
/* A string field; its value is escaped, so peer text is safe here. */
void log_str(struct log_line *l, const char *key, const char *val);
void log_strn(struct log_line *l, const char *key, const char *val,
              size_t n);
void log_int(struct log_line *l, const char *key, long long val);
void log_num(struct log_line *l, const char *key, double val);
/* A bare token (a number, true, false): unquoted in text and in JSON, so
 * the caller vouches that it is valid JSON and holds no blank. */
void log_bare(struct log_line *l, const char *key, const char *val,
              size_t n);
/* Says, at the line's end, that some fields were left out. */
void log_truncated(struct log_line *l);
void log_end(struct log_line *l);

/* One-field shorthands for the common cases. */
void log_msg(enum log_level level, const char *msg);
void log_msg_str(enum log_level level, const char *msg, const char *key,
                 const char *val);

#endif
