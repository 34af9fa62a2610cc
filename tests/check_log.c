/* check_log.c - log lines as written to stderr: levels, escaping, JSON. */
#include "check_suites.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>
#include <cJSON.h>

#include "../core/log.h"
#include "../core/util.h"

/* stderr goes to a temp file while a test runs. */
static FILE *cap;
static int saved_fd = -1;
static char *text;

static void
setup(void)
{
    cap = tmpfile();
    ck_assert_ptr_nonnull(cap);
    fflush(stderr);
    saved_fd = dup(STDERR_FILENO);
    ck_assert_int_ge(saved_fd, 0);
    ck_assert_int_eq(dup2(fileno(cap), STDERR_FILENO), STDERR_FILENO);
    text = NULL;
}

static void
teardown(void)
{
    fflush(stderr);
    if (saved_fd >= 0) {
        dup2(saved_fd, STDERR_FILENO);
        close(saved_fd);
        saved_fd = -1;
    }
    fclose(cap);
    cap = NULL;
    free(text);
    text = NULL;
    test_release();
    /* As the runner set it. */
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
}

/* Everything written to stderr since setup, NUL-terminated. */
static const char *
captured(size_t *len)
{
    long n;

    fflush(stderr);
    n = lseek(fileno(cap), 0, SEEK_END);
    ck_assert_int_ge(n, 0);
    free(text);
    text = malloc((size_t)n + 1);
    ck_assert_int_eq(pread(fileno(cap), text, (size_t)n, 0), n);
    text[n] = '\0';
    if (len != NULL)
        *len = (size_t)n;
    return text;
}

/* Starts the capture over (stderr shares the file's offset). */
static void
recapture(void)
{
    ck_assert_int_eq(ftruncate(fileno(cap), 0), 0);
    ck_assert_int_eq(lseek(fileno(cap), 0, SEEK_SET), 0);
}

static int
count_char(const char *s, char c)
{
    int n = 0;

    for (; *s != '\0'; s++)
        n += *s == c;
    return n;
}

#define ASSERT_HAS(hay, needle)                                          \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "'%.900s' lacks '%s'",  \
                  (hay), (needle))

START_TEST(log_info_is_silent_at_warn)
{
    struct log_line l;
    size_t n;

    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    ck_assert(!log_enabled(LOG_INFO));
    ck_assert(log_enabled(LOG_WARN));
    ck_assert(log_enabled(LOG_ERROR));
    log_msg(LOG_INFO, "hidden");
    log_msg_str(LOG_DEBUG, "hidden too", "k", "v");
    ck_assert(!log_begin(&l, LOG_INFO, "off"));
    log_str(&l, "k", "v");
    log_int(&l, "n", 1);
    log_end(&l);
    captured(&n);
    ck_assert_uint_eq(n, 0);
    log_msg(LOG_WARN, "shown");
    ck_assert_msg(strncmp(captured(NULL), "ts=", 3) == 0, "%s", text);
    ASSERT_HAS(text, " level=warn msg=shown\n");
    ck_assert_int_eq(count_char(text, '\n'), 1);
}
END_TEST

START_TEST(log_level_names_parse)
{
    enum log_level lv = LOG_ERROR;

    ck_assert_int_eq(log_level_parse("debug", &lv), 0);
    ck_assert_int_eq(lv, LOG_DEBUG);
    ck_assert_int_eq(log_level_parse("warn", &lv), 0);
    ck_assert_int_eq(lv, LOG_WARN);
    ck_assert_int_eq(log_level_parse("error", &lv), 0);
    ck_assert_int_eq(lv, LOG_ERROR);
    ck_assert_int_eq(log_level_parse("verbose", &lv), -1);
    ck_assert_int_eq(log_level_parse("", &lv), -1);
    ck_assert_int_eq(lv, LOG_ERROR);
}
END_TEST

START_TEST(log_text_quotes_and_escapes_values)
{
    struct log_line l;

    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    ck_assert(log_begin(&l, LOG_INFO, "event stored"));
    log_str(&l, "plain", "abc-1.2");
    log_str(&l, "spaced", "two words");
    log_str(&l, "quoted", "say \"hi\"");
    log_str(&l, "lines", "one\ntwo\r");
    log_str(&l, "slash", "back\\slash");
    log_str(&l, "ctl", "tab\there\x01\x7f");
    log_str(&l, "eq", "a=b");
    log_str(&l, "empty", "");
    log_str(&l, "none", NULL);
    log_strn(&l, "cut", "abcdef", 3);
    log_int(&l, "n", -42);
    log_num(&l, "secs", 1.5);
    log_end(&l);
    captured(NULL);
    ASSERT_HAS(text, " level=info msg=\"event stored\" plain=abc-1.2"
                     " spaced=\"two words\" quoted=\"say \\\"hi\\\"\""
                     " lines=\"one\\ntwo\\r\" slash=\"back\\\\slash\""
                     " ctl=\"tab\\there\\u0001\\u007f\" eq=\"a=b\""
                     " empty=\"\" none=\"\" cut=abc n=-42 secs=1.500\n");
    ck_assert_int_eq(count_char(text, '\n'), 1);
}
END_TEST

/* A peer's text cannot forge a second line or a field of its own. */
START_TEST(log_text_value_cannot_inject_a_line)
{
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    log_msg_str(LOG_WARN, "bad request", "contact",
                "x\nts=2020-01-01T00:00:00.000Z level=error msg=forged");
    captured(NULL);
    ck_assert_int_eq(count_char(text, '\n'), 1);
    ASSERT_HAS(text, " contact=\"x\\nts=2020-01-01T00:00:00.000Z"
                     " level=error msg=forged\"\n");
}
END_TEST

/* Field names may come from a script's log call, so they are peer text
 * as much as the values. */
START_TEST(log_escapes_field_names)
{
    struct log_line l;
    cJSON *doc;

    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    ck_assert(log_begin(&l, LOG_INFO, "m"));
    log_str(&l, "k\nlevel=error", "v");
    log_end(&l);
    ck_assert_int_eq(count_char(captured(NULL), '\n'), 1);

    recapture();
    log_setup(LOG_INFO, LOG_FORMAT_JSON);
    ck_assert(log_begin(&l, LOG_INFO, "m"));
    log_str(&l, "k\"", "v");
    log_end(&l);
    doc = cJSON_Parse(captured(NULL));
    ck_assert_msg(doc != NULL, "not JSON: %s", text);
    cJSON_Delete(doc);
}
END_TEST

START_TEST(log_json_lines_parse)
{
    struct log_line l;
    cJSON *doc;
    const cJSON *f;

    log_setup(LOG_DEBUG, LOG_FORMAT_JSON);
    ck_assert(log_begin(&l, LOG_DEBUG, "hello \"there\""));
    log_str(&l, "s", "a\"b\\c\nd\x01\t");
    log_int(&l, "n", -42);
    log_num(&l, "t", 1.5);
    log_str(&l, "u", "caf\xc3\xa9");
    log_str(&l, "nul", NULL);
    log_strn(&l, "cut", "abcdef", 2);
    log_end(&l);
    log_msg_str(LOG_ERROR, "second", "k", "v");
    captured(NULL);
    ck_assert_int_eq(count_char(text, '\n'), 2);

    doc = cJSON_Parse(text);
    ck_assert_msg(doc != NULL, "not JSON: %s", text);
    f = cJSON_GetObjectItemCaseSensitive(doc, "ts");
    ck_assert(cJSON_IsString(f));
    ck_assert_uint_eq(strlen(f->valuestring), 24);
    ck_assert_int_eq(f->valuestring[23], 'Z');
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "level")->valuestring, "debug");
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "msg")->valuestring,
                     "hello \"there\"");
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "s")->valuestring,
                     "a\"b\\c\nd\x01\t");
    ck_assert_double_eq(cJSON_GetObjectItem(doc, "n")->valuedouble, -42);
    ck_assert_double_eq(cJSON_GetObjectItem(doc, "t")->valuedouble, 1.5);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "u")->valuestring,
                     "caf\xc3\xa9");
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "nul")->valuestring, "");
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "cut")->valuestring, "ab");
    cJSON_Delete(doc);

    doc = cJSON_Parse(strchr(text, '\n') + 1);
    ck_assert_msg(doc != NULL, "second line not JSON: %s", text);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "level")->valuestring, "error");
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "k")->valuestring, "v");
    cJSON_Delete(doc);
}
END_TEST

/* A guard after the line catches a write past its buffer. */
struct guarded {
    struct log_line l;
    unsigned char guard[64];
};

static char *
long_value(size_t n, char c)
{
    char *v = test_keep(malloc(n + 1));

    ck_assert_ptr_nonnull(v);
    memset(v, c, n);
    v[n] = '\0';
    return v;
}

static void
assert_guard(const struct guarded *g)
{
    for (size_t i = 0; i < sizeof(g->guard); i++)
        ck_assert_int_eq(g->guard[i], 0xa5);
}

START_TEST(log_truncates_long_value_without_overflow)
{
    struct guarded g;
    char *v = long_value(3 * GRWHD_LOG_LINE_MAX, 'x');
    char *q = long_value(GRWHD_LOG_LINE_MAX, '\x01');
    size_t n;

    memset(g.guard, 0xa5, sizeof(g.guard));
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    ck_assert(log_begin(&g.l, LOG_INFO, "big"));
    log_str(&g.l, "v", v);
    log_str(&g.l, "after", "seen");
    log_str(&g.l, "q", q);
    log_end(&g.l);
    assert_guard(&g);
    captured(&n);
    ck_assert_uint_le(n, GRWHD_LOG_LINE_MAX);
    ck_assert_uint_gt(n, GRWHD_LOG_LINE_MAX - 64);
    ck_assert_int_eq(text[n - 1], '\n');
    ck_assert_int_eq(count_char(text, '\n'), 1);
    ck_assert_msg(strncmp(text, "ts=", 3) == 0, "%.900s", text);
    /* Too long to go bare: quoted, so the cut shows as ...". */
    ASSERT_HAS(text, " v=\"xxxx");
    ASSERT_HAS(text, "xxx...\"\n");
    ck_assert_ptr_null(strstr(text, "after="));

    /* Escapes grow a value six-fold; the bound still holds. */
    recapture();
    ck_assert(log_begin(&g.l, LOG_INFO, "big"));
    log_str(&g.l, "q", q);
    log_end(&g.l);
    assert_guard(&g);
    captured(&n);
    ck_assert_uint_le(n, GRWHD_LOG_LINE_MAX);
    ck_assert_int_eq(count_char(text, '\n'), 1);
}
END_TEST

/* A line cut at the bound must still be one JSON object. */
START_TEST(log_json_long_value_still_parses)
{
    struct guarded g;
    char *v = long_value(2 * GRWHD_LOG_LINE_MAX, 'x');
    cJSON *doc;
    size_t n;

    memset(g.guard, 0xa5, sizeof(g.guard));
    log_setup(LOG_INFO, LOG_FORMAT_JSON);
    ck_assert(log_begin(&g.l, LOG_INFO, "big"));
    log_str(&g.l, "v", v);
    log_int(&g.l, "n", 7);
    log_end(&g.l);
    assert_guard(&g);
    captured(&n);
    ck_assert_uint_le(n, GRWHD_LOG_LINE_MAX);
    ck_assert_int_eq(text[n - 1], '\n');
    doc = cJSON_Parse(text);
    ck_assert_msg(doc != NULL, "not JSON: ...%s", text + n - 40);
    ck_assert_str_eq(cJSON_GetObjectItem(doc, "msg")->valuestring, "big");
    cJSON_Delete(doc);
}
END_TEST

/*
 * Whatever a value is made of and wherever the bound cuts it, the line
 * stays valid UTF-8 and, in JSON, one object: no half character and no
 * half escape at the cut.
 */
static const char *const fills[] = {
    "x", "\"", "\\", "\x01", "\xc3\xa9", "\xe2\x82\xac", "\\u",
    "a\\u00",
};

START_TEST(log_cut_line_stays_valid)
{
    char *v = test_keep(malloc(3 * GRWHD_LOG_LINE_MAX));
    size_t unit = strlen(fills[_i]), n, bad;

    for (size_t o = 0; o + unit < 3 * GRWHD_LOG_LINE_MAX; o += unit)
        memcpy(v + o, fills[_i], unit);
    v[(3 * GRWHD_LOG_LINE_MAX - 1) / unit * unit] = '\0';
    for (int json = 0; json <= 1; json++) {
        /* Messages of 1 to 6 bytes move the cut across every offset of
         * the longest escape. */
        for (int pad = 1; pad <= 6; pad++) {
            struct log_line l;
            const char *msg = "mmmmmm" + 6 - pad;

            recapture();
            log_setup(LOG_INFO, json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
            ck_assert(log_begin(&l, LOG_INFO, msg));
            log_str(&l, "v", v);
            log_int(&l, "n", 1);
            log_end(&l);
            captured(&n);
            ck_assert_uint_le(n, GRWHD_LOG_LINE_MAX);
            ck_assert_int_eq(count_char(text, '\n'), 1);
            bad = util_utf8_valid((unsigned char *)text, n);
            ck_assert_msg(bad == n,
                          "json=%d pad=%d: bad UTF-8 at byte %zu of %zu: "
                          "%02x %02x %02x", json, pad, bad, n,
                          (unsigned char)text[bad],
                          (unsigned char)text[bad + 1],
                          (unsigned char)text[bad + 2]);
            if (json) {
                cJSON *doc = cJSON_Parse(text);

                ck_assert_msg(doc != NULL, "pad=%d: not JSON: ...%s", pad,
                              text + n - 24);
                cJSON_Delete(doc);
            }
        }
    }
}
END_TEST

/*
 * Many short fields: the bound falls inside a key or a number.  No field
 * may be written in part (a cut number reads as another number), and the
 * line says that fields were left out.
 */
START_TEST(log_fields_are_whole_or_left_out)
{
    for (int json = 0; json <= 1; json++) {
        for (int pad = 0; pad < 12; pad++) {
            struct log_line l;
            char key[32];
            int shown = 0;
            size_t n;

            recapture();
            log_setup(LOG_INFO, json ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT);
            ck_assert(log_begin(&l, LOG_INFO, "m"));
            for (int i = 0; i < 600; i++) {
                snprintf(key, sizeof(key), "k%d%.*s", i, pad, "zzzzzzzzzzzz");
                if (i % 3 == 0)
                    log_int(&l, key, 1000000 + i);
                else if (i % 3 == 1)
                    log_bare(&l, key, "true", 4);
                else
                    log_str(&l, key, "vv");
            }
            log_end(&l);
            captured(&n);
            ck_assert_uint_le(n, GRWHD_LOG_LINE_MAX);
            if (json) {
                cJSON *doc = cJSON_Parse(text), *it;

                ck_assert_msg(doc != NULL, "pad=%d: not JSON: ...%s", pad,
                              text + n - 40);
                ck_assert_msg(cJSON_IsTrue(cJSON_GetObjectItem(doc,
                                                               "truncated")),
                              "pad=%d: ...%s", pad, text + n - 60);
                cJSON_ArrayForEach(it, doc) {
                    int i;

                    if (sscanf(it->string, "k%d", &i) != 1)
                        continue;
                    shown++;
                    snprintf(key, sizeof(key), "k%d%.*s", i, pad,
                             "zzzzzzzzzzzz");
                    ck_assert_str_eq(it->string, key);
                    if (i % 3 == 0)
                        ck_assert_int_eq((int)it->valuedouble, 1000000 + i);
                    else if (i % 3 == 1)
                        ck_assert(cJSON_IsTrue(it));
                    else
                        ck_assert_str_eq(it->valuestring, "vv");
                }
                cJSON_Delete(doc);
            } else {
                /* Every field but the marker is whole: kN<pad>=value. */
                char *save = NULL, *tok;

                ck_assert_msg(n > 16 && strcmp(text + n - 16,
                                               " truncated=true\n") == 0,
                              "pad=%d: ...%s", pad, text + n - 40);
                text[n - 1] = '\0';
                for (tok = strtok_r(text, " ", &save); tok;
                     tok = strtok_r(NULL, " ", &save)) {
                    int i;
                    char want[64];

                    if (sscanf(tok, "k%d", &i) != 1)
                        continue;
                    shown++;
                    snprintf(want, sizeof(want), "k%d%.*s=%s", i, pad,
                             "zzzzzzzzzzzz",
                             i % 3 == 0 ? "" : i % 3 == 1 ? "true" : "vv");
                    if (i % 3 == 0)
                        snprintf(want, sizeof(want), "k%d%.*s=%d", i, pad,
                                 "zzzzzzzzzzzz", 1000000 + i);
                    ck_assert_str_eq(tok, want);
                }
            }
            ck_assert_int_gt(shown, 100);
        }
    }
}
END_TEST

Suite *
log_suite(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, log_info_is_silent_at_warn);
    tcase_add_test(tc, log_level_names_parse);
    tcase_add_test(tc, log_text_quotes_and_escapes_values);
    tcase_add_test(tc, log_text_value_cannot_inject_a_line);
    tcase_add_test(tc, log_escapes_field_names);
    tcase_add_test(tc, log_json_lines_parse);
    tcase_add_test(tc, log_truncates_long_value_without_overflow);
    tcase_add_test(tc, log_json_long_value_still_parses);
    tcase_add_test(tc, log_fields_are_whole_or_left_out);
    tcase_add_loop_test(tc, log_cut_line_stays_valid, 0,
                        (int)(sizeof(fills) / sizeof(fills[0])));
    suite_add_tcase(s, tc);
    return s;
}
