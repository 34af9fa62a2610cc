/* check_batch.c - request bodies split into events, and UTF-8 checks. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cJSON.h>

#include "../core/batch.h"
#include "../core/util.h"

#define REPL "\xef\xbf\xbd"

static struct batch b;
static struct gerr err;

static void
setup(void)
{
    memset(&b, 0, sizeof(b));
    memset(&err, 0, sizeof(err));
}

static void
teardown(void)
{
    batch_free(&b);
    test_release();
}

/* Parses a malloc'd copy of s[0..len): batch_parse owns what it gets. */
static int
parse_n(const char *s, size_t len)
{
    char *body = malloc(len ? len : 1);

    ck_assert_ptr_nonnull(body);
    memcpy(body, s, len);
    return batch_parse(&b, body, len, &err);
}

static int
parse(const char *s)
{
    return parse_n(s, strlen(s));
}

/* The JSON text without the white space between tokens. */
static char *
compact(const char *s)
{
    char *out = test_keep(malloc(strlen(s) + 1));
    size_t o = 0;
    bool in_str = false;

    ck_assert_ptr_nonnull(out);
    for (size_t i = 0; s[i] != '\0'; i++) {
        char c = s[i];

        if (in_str) {
            out[o++] = c;
            if (c == '\\' && s[i + 1] != '\0')
                out[o++] = s[++i];
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
            out[o++] = c;
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            out[o++] = c;
        }
    }
    out[o] = '\0';
    return out;
}

static void
assert_event_text(size_t i, const char *want)
{
    ck_assert_msg(b.ev[i].len == strlen(want) &&
                      memcmp(b.ev[i].json, want, b.ev[i].len) == 0,
                  "event %zu is '%.*s', want '%s'", i, (int)b.ev[i].len,
                  b.ev[i].json, want);
}

/* ---- utf8 ---- */

static size_t
valid(const char *s)
{
    return util_utf8_valid((const unsigned char *)s, strlen(s));
}

START_TEST(utf8_accepts_multibyte_sequences)
{
    ck_assert_uint_eq(valid("plain ascii"), 11);
    ck_assert_uint_eq(valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"), 10);
    ck_assert_uint_eq(valid("\xed\x9f\xbf"), 3);         /* U+D7FF */
    ck_assert_uint_eq(valid("\xee\x80\x80"), 3);         /* U+E000 */
    ck_assert_uint_eq(valid("\xef\xbf\xbf"), 3);         /* U+FFFF */
    ck_assert_uint_eq(valid("\xf4\x8f\xbf\xbf"), 4);     /* U+10FFFF */
    ck_assert_uint_eq(util_utf8_valid((const unsigned char *)"a\0b", 3), 3);
}
END_TEST

START_TEST(utf8_rejects_surrogates)
{
    ck_assert_uint_eq(valid("ab\xed\xa0\x80"), 2);
    ck_assert_uint_eq(valid("\xed\xbf\xbf"), 0);
}
END_TEST

START_TEST(utf8_rejects_overlong_forms)
{
    ck_assert_uint_eq(valid("x\xc0\xaf"), 1);
    ck_assert_uint_eq(valid("\xc1\xbf"), 0);
    ck_assert_uint_eq(valid("xy\xe0\x80\xaf"), 2);
    ck_assert_uint_eq(valid("\xf0\x80\x80\xaf"), 0);
}
END_TEST

START_TEST(utf8_rejects_truncated_and_stray_bytes)
{
    ck_assert_uint_eq(valid("a\xe2\x82"), 1);
    ck_assert_uint_eq(valid("\xf0\x9f\x98"), 0);
    ck_assert_uint_eq(valid("ab\xe2\x82x"), 2);
    ck_assert_uint_eq(valid("\x80"), 0);
    ck_assert_uint_eq(valid("ok\xff"), 2);
    ck_assert_uint_eq(valid("\xf4\x90\x80\x80"), 0);    /* past U+10FFFF */
    ck_assert_uint_eq(valid("\xf5\x80\x80\x80"), 0);
}
END_TEST

/* ---- batch ---- */

START_TEST(batch_object_gives_one_event)
{
    char *text = test_keep(test_fixture("contact_added.json", NULL));
    char *want = compact(text);

    ck_assert_msg(parse(text) == 0, "%s", err.msg);
    ck_assert(!b.is_array);
    ck_assert(!b.repaired);
    ck_assert_uint_eq(b.n, 1);
    ck_assert_str_eq(b.ev[0].type, "contact_added");
    ck_assert_str_eq(b.ev[0].contact, "Hn5Wc");
    assert_event_text(0, want);
}
END_TEST

START_TEST(batch_array_keeps_order_and_element_text)
{
    static const char *const names[] = {
        "contact_opened_message.json", "contact_added.json",
        "contacts_import_finished.json", "contact_copied.json",
        "contact_removed_bounce.json",
    };
    enum { N = sizeof(names) / sizeof(names[0]) };
    char *texts[N], *body = NULL;
    size_t len = 0;

    for (size_t i = 0; i < N; i++) {
        size_t n;

        texts[i] = test_keep(test_fixture(names[i], &n));
        body = realloc(body, len + n + 16);
        memcpy(body + len, i == 0 ? " [\n" : " ,\r\n\t", i == 0 ? 3 : 5);
        len += i == 0 ? 3 : 5;
        memcpy(body + len, texts[i], n);
        len += n;
    }
    memcpy(body + len, "\n] \n", 4);
    len += 4;
    ck_assert_msg(batch_parse(&b, body, len, &err) == 0, "%s", err.msg);
    ck_assert(b.is_array);
    ck_assert_uint_eq(b.n, N);
    for (size_t i = 0; i < N; i++) {
        cJSON *doc = cJSON_Parse(texts[i]);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(doc, "type");
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(doc, "contact");
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "contactId");
        char *want = compact(texts[i]);

        ck_assert_str_eq(b.ev[i].type, type->valuestring);
        ck_assert_str_eq(b.ev[i].contact,
                         cJSON_IsString(cid) ? cid->valuestring : "");
        assert_event_text(i, want);
        cJSON_Delete(doc);
    }
}
END_TEST

/* Each event's text, read back by another parser, is its element. */
START_TEST(batch_fixture_array_matches_independent_parse)
{
    size_t len;
    char *text = test_keep(test_fixture("batch.json", &len));
    cJSON *doc = cJSON_Parse(text);
    int n = cJSON_GetArraySize(doc);

    ck_assert_ptr_nonnull(doc);
    ck_assert_msg(parse_n(text, len) == 0, "%s", err.msg);
    ck_assert_int_eq(n, 5);
    ck_assert_uint_eq(b.n, (size_t)n);
    for (int i = 0; i < n; i++) {
        cJSON *want = cJSON_GetArrayItem(doc, i);
        cJSON *got = cJSON_ParseWithLength(b.ev[i].json, b.ev[i].len);
        const cJSON *c = cJSON_GetObjectItemCaseSensitive(want, "contact");
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(c, "contactId");

        ck_assert_msg(got != NULL, "event %d does not parse", i);
        ck_assert_msg(cJSON_Compare(want, got, 1), "event %d differs", i);
        ck_assert_str_eq(
            b.ev[i].type,
            cJSON_GetObjectItemCaseSensitive(want, "type")->valuestring);
        ck_assert_str_eq(b.ev[i].contact, cid->valuestring);
        cJSON_Delete(got);
    }
    cJSON_Delete(doc);
}
END_TEST

START_TEST(batch_event_text_drops_white_space_only_between_tokens)
{
    ck_assert_msg(parse("[ {\"a\" : [1, 2] ,\n\"b\":\"x  y\\n\" , "
                        "\"c\" : { } } ]") == 0,
                  "%s", err.msg);
    ck_assert_uint_eq(b.n, 1);
    assert_event_text(0, "{\"a\":[1,2],\"b\":\"x  y\\n\",\"c\":{}}");
}
END_TEST

START_TEST(batch_empty_array_gives_no_events)
{
    ck_assert_msg(parse(" [ \n ] ") == 0, "%s", err.msg);
    ck_assert(b.is_array);
    ck_assert_uint_eq(b.n, 0);
}
END_TEST

static const struct {
    const char *body, *msg;
} bad_elements[] = {
    {"[{\"type\":\"a\"}, 5]", "element 2 is not an object"},
    {"[{}, {}, \"str\"]", "element 3 is not an object"},
    {"[null]", "element 1 is not an object"},
    {"[{}, [{}]]", "element 2 is not an object"},
    {"[true, {}]", "element 1 is not an object"},
};

START_TEST(batch_rejects_array_with_non_object)
{
    ck_assert_int_eq(parse(bad_elements[_i].body), -1);
    ck_assert_str_eq(err.msg, bad_elements[_i].msg);
}
END_TEST

static const char *const scalars[] = {"42", " \"x\" ", "true", "null",
                                      "-1.5e3"};

START_TEST(batch_rejects_scalar_body)
{
    ck_assert_int_eq(parse(scalars[_i]), -1);
    ck_assert_str_eq(err.msg, "body is neither an object nor an array");
}
END_TEST

static const struct {
    const char *body, *msg;
} not_json[] = {
    {"hello", "body is not valid JSON (unexpected character at byte 1)"},
    {"", "body is empty"},
    {" \r\n", "body is empty"},
    {"{", "body is not valid JSON (it ends early, after byte 1: expected "
          "a member name)"},
    {"{\"type\":\"a\"", "body is not valid JSON (it ends early, after byte "
                        "11: expected ',' or '}')"},
    {"[{}", "body is not valid JSON (it ends early, after byte 3: "
             "expected ',' or ']')"},
    {"[{},]", "element 2 is not an object"},
    {"[{},", "body is not valid JSON (it ends early, after byte 4: "
            "unterminated array)"},
    {"{\"a\":tru}", "body is not valid JSON (unexpected character at byte "
                    "6)"},
    {"{\"a\":\"b}", "body is not valid JSON (it ends early, after byte 8: "
                    "unterminated string)"},
    {"{\"a\":01}", "body is not valid JSON (leading zero at byte 7)"},
    {"{\"a\":\"\\x\"}", "body is not valid JSON (bad escape at byte 7)"},
    {"{} x", "body is not valid JSON (data after the value at byte 4)"},
    {"{}{}", "body is not valid JSON (data after the value at byte 3)"},
    {"[{}] ]", "body is not valid JSON (data after the value at byte 6)"},
    {"[{}],", "body is not valid JSON (data after the value at byte 5)"},
    {"42 x", "body is not valid JSON"},
};

START_TEST(batch_rejects_text_that_is_not_json)
{
    ck_assert_int_eq(parse(not_json[_i].body), -1);
    ck_assert_str_eq(err.msg, not_json[_i].msg);
}
END_TEST

START_TEST(batch_rejects_truncated_fixture)
{
    size_t len;
    char *text = test_keep(test_fixture("batch.json", &len));

    ck_assert_int_eq(parse_n(text, len / 2), -1);
    ck_assert_msg(strncmp(err.msg, "body is not valid JSON (", 24) == 0,
                  "%s", err.msg);
}
END_TEST

START_TEST(batch_missing_or_non_string_type_is_empty)
{
    static const char *const bodies[] = {
        "{\"contact\":{\"contactId\":\"c1\"}}",
        "{\"type\":5,\"contact\":{\"contactId\":\"c1\"}}",
        "{\"type\":null,\"contact\":{\"contactId\":\"c1\"}}",
        "{\"type\":{\"type\":\"x\"},\"contact\":{\"contactId\":\"c1\"}}",
        "{\"data\":{\"type\":\"x\"},\"contact\":{\"contactId\":\"c1\"}}",
    };

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        ck_assert_msg(parse(bodies[i]) == 0, "%s", err.msg);
        ck_assert_uint_eq(b.n, 1);
        ck_assert_msg(strcmp(b.ev[0].type, "") == 0, "%s: type '%s'",
                      bodies[i], b.ev[0].type);
        ck_assert_str_eq(b.ev[0].contact, "c1");
        batch_free(&b);
    }
}
END_TEST

START_TEST(batch_missing_contact_is_empty)
{
    static const char *const bodies[] = {
        "{\"type\":\"t\"}",
        "{\"type\":\"t\",\"contact\":\"Hn5Wc\"}",
        "{\"type\":\"t\",\"contact\":{\"contactId\":7}}",
        "{\"type\":\"t\",\"contact\":{\"x\":{\"contactId\":\"no\"}}}",
        "{\"type\":\"t\",\"contactId\":\"no\"}",
    };

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        ck_assert_msg(parse(bodies[i]) == 0, "%s", err.msg);
        ck_assert_str_eq(b.ev[0].type, "t");
        ck_assert_msg(strcmp(b.ev[0].contact, "") == 0, "%s: contact '%s'",
                      bodies[i], b.ev[0].contact);
        batch_free(&b);
    }
}
END_TEST

START_TEST(batch_unescapes_type_and_contact)
{
    ck_assert_msg(parse("{\"type\":\"a\\u00e9\\/b\","
                        "\"contact\":{\"contactId\":\"x\\\"y\\\\z\"}}") == 0,
                  "%s", err.msg);
    ck_assert_str_eq(b.ev[0].type, "a\xc3\xa9/b");
    ck_assert_str_eq(b.ev[0].contact, "x\"y\\z");
}
END_TEST

START_TEST(batch_keeps_valid_utf8_untouched)
{
    const char *body = "{\"type\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}";

    ck_assert_msg(parse(body) == 0, "%s", err.msg);
    ck_assert(!b.repaired);
    ck_assert_str_eq(b.ev[0].type, "caf\xc3\xa9 \xf0\x9f\x98\x80");
    assert_event_text(0, body);
}
END_TEST

START_TEST(batch_repairs_invalid_byte)
{
    ck_assert_msg(parse("{\"type\":\"a\xff" "b\",\"k\":\"\xfe\"}") == 0, "%s",
                  err.msg);
    ck_assert(b.repaired);
    ck_assert_str_eq(b.ev[0].type, "a" REPL "b");
    assert_event_text(0, "{\"type\":\"a" REPL "b\",\"k\":\"" REPL "\"}");
    ck_assert_uint_eq(util_utf8_valid((unsigned char *)b.body, b.len), b.len);
}
END_TEST

START_TEST(batch_repairs_overlong_sequence)
{
    ck_assert_msg(parse("{\"type\":\"a\xc0\xaf" "b\"}") == 0, "%s", err.msg);
    ck_assert(b.repaired);
    ck_assert_str_eq(b.ev[0].type, "a" REPL REPL "b");
    assert_event_text(0, "{\"type\":\"a" REPL REPL "b\"}");
}
END_TEST

START_TEST(batch_repairs_surrogate_and_truncated_sequence)
{
    ck_assert_msg(parse("{\"type\":\"\xed\xa0\x80\",\"x\":\"\xe2\x82\"}") ==
                      0,
                  "%s", err.msg);
    ck_assert(b.repaired);
    ck_assert_str_eq(b.ev[0].type, REPL REPL REPL);
    assert_event_text(0, "{\"type\":\"" REPL REPL REPL "\",\"x\":\"" REPL
                         REPL "\"}");
}
END_TEST

/* "{\"a\":" repeated, the innermost value, then the closing braces. */
static char *
nested_objects(int levels, const char *prefix, const char *suffix)
{
    size_t cap = strlen(prefix) + strlen(suffix) + (size_t)levels * 6 + 8;
    char *s = test_keep(malloc(cap));

    ck_assert_ptr_nonnull(s);
    strcpy(s, prefix);
    for (int i = 0; i < levels - 1; i++)
        strcat(s, "{\"a\":");
    strcat(s, "{}");
    for (int i = 0; i < levels - 1; i++)
        strcat(s, "}");
    strcat(s, suffix);
    return s;
}

START_TEST(batch_takes_nesting_up_to_the_limit)
{
    char *body = nested_objects(GRWHD_JSON_DEPTH_MAX, "", "");

    ck_assert_msg(parse(body) == 0, "%s", err.msg);
    ck_assert_uint_eq(b.n, 1);
    body = nested_objects(GRWHD_JSON_DEPTH_MAX - 1, "[", "]");
    batch_free(&b);
    ck_assert_msg(parse(body) == 0, "%s", err.msg);
}
END_TEST

/* A body of n tiny events: "[{},{},...]". */
static char *
many_events(size_t n)
{
    char *s = test_keep(malloc(n * 3 + 2));
    size_t o = 0;

    ck_assert_ptr_nonnull(s);
    s[o++] = '[';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            s[o++] = ',';
        s[o++] = '{';
        s[o++] = '}';
    }
    s[o++] = ']';
    s[o] = '\0';
    return s;
}

START_TEST(batch_takes_up_to_the_event_limit)
{
    ck_assert_msg(parse(many_events(GRWHD_BATCH_MAX)) == 0, "%s", err.msg);
    ck_assert_uint_eq(b.n, GRWHD_BATCH_MAX);
    ck_assert(!b.too_many);
}
END_TEST

START_TEST(batch_refuses_more_events_than_the_limit)
{
    ck_assert_int_eq(parse(many_events(GRWHD_BATCH_MAX + 1)), -1);
    ck_assert(b.too_many);
    ck_assert_str_eq(err.msg, "more than 1000 events in one request");
}
END_TEST

START_TEST(batch_rejects_nesting_past_the_limit)
{
    char *body = nested_objects(GRWHD_JSON_DEPTH_MAX + 1, "", "");

    ck_assert_int_eq(parse(body), -1);
    ck_assert_str_eq(err.msg, "JSON nests deeper than 128 levels");
    body = nested_objects(GRWHD_JSON_DEPTH_MAX, "[", "]");
    batch_free(&b);
    ck_assert_int_eq(parse(body), -1);
    ck_assert_str_eq(err.msg, "JSON nests deeper than 128 levels");
}
END_TEST

/* A body of nothing but '[' fails fast, whatever its length. */
START_TEST(batch_survives_bracket_bomb)
{
    enum { N = 10000 };
    char *body = test_keep(malloc(N + 16));

    strcpy(body, "{\"a\":");
    memset(body + 5, '[', N);
    ck_assert_int_eq(parse_n(body, N + 5), -1);
    ck_assert_str_eq(err.msg, "JSON nests deeper than 128 levels");
    batch_free(&b);
    memset(body, '[', N);
    ck_assert_int_eq(parse_n(body, N), -1);
    ck_assert_str_eq(err.msg, "element 1 is not an object");
    batch_free(&b);
    body[0] = '[';
    body[1] = '{';
    body[2] = '"';
    body[3] = 'a';
    body[4] = '"';
    body[5] = ':';
    ck_assert_int_eq(parse_n(body, N), -1);
    ck_assert_str_eq(err.msg, "JSON nests deeper than 128 levels");
}
END_TEST

START_TEST(batch_free_is_safe_on_zeroed_and_freed_batch)
{
    struct batch z;

    memset(&z, 0, sizeof(z));
    batch_free(&z);
    batch_free(NULL);
    ck_assert_ptr_null(z.body);
    ck_assert_uint_eq(z.n, 0);
    ck_assert_int_eq(parse("[{\"type\":\"x\"}]"), 0);
    batch_free(&b);
    ck_assert_ptr_null(b.body);
    ck_assert_ptr_null(b.ev);
    ck_assert_uint_eq(b.n, 0);
    batch_free(&b);
}
END_TEST

/* A failed parse still owns the body: batch_free releases it. */
START_TEST(batch_owns_body_after_failure)
{
    char *body = malloc(8);

    memcpy(body, "[{},7]", 6);
    ck_assert_int_eq(batch_parse(&b, body, 6, &err), -1);
    ck_assert_ptr_eq(b.body, body);
    ck_assert_uint_eq(b.len, 6);
}
END_TEST

Suite *
batch_suite(void)
{
    Suite *s = suite_create("batch");
    TCase *tc = tcase_create("utf8");
    int nbad = (int)(sizeof(bad_elements) / sizeof(bad_elements[0]));
    int nscalar = (int)(sizeof(scalars) / sizeof(scalars[0]));
    int nnot = (int)(sizeof(not_json) / sizeof(not_json[0]));

    tcase_add_test(tc, utf8_accepts_multibyte_sequences);
    tcase_add_test(tc, utf8_rejects_surrogates);
    tcase_add_test(tc, utf8_rejects_overlong_forms);
    tcase_add_test(tc, utf8_rejects_truncated_and_stray_bytes);
    suite_add_tcase(s, tc);

    tc = tcase_create("batch");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, batch_object_gives_one_event);
    tcase_add_test(tc, batch_array_keeps_order_and_element_text);
    tcase_add_test(tc, batch_fixture_array_matches_independent_parse);
    tcase_add_test(tc, batch_event_text_drops_white_space_only_between_tokens);
    tcase_add_test(tc, batch_empty_array_gives_no_events);
    tcase_add_loop_test(tc, batch_rejects_array_with_non_object, 0, nbad);
    tcase_add_loop_test(tc, batch_rejects_scalar_body, 0, nscalar);
    tcase_add_loop_test(tc, batch_rejects_text_that_is_not_json, 0, nnot);
    tcase_add_test(tc, batch_rejects_truncated_fixture);
    tcase_add_test(tc, batch_missing_or_non_string_type_is_empty);
    tcase_add_test(tc, batch_missing_contact_is_empty);
    tcase_add_test(tc, batch_unescapes_type_and_contact);
    tcase_add_test(tc, batch_keeps_valid_utf8_untouched);
    tcase_add_test(tc, batch_repairs_invalid_byte);
    tcase_add_test(tc, batch_repairs_overlong_sequence);
    tcase_add_test(tc, batch_repairs_surrogate_and_truncated_sequence);
    tcase_add_test(tc, batch_takes_nesting_up_to_the_limit);
    tcase_add_test(tc, batch_rejects_nesting_past_the_limit);
    tcase_add_test(tc, batch_takes_up_to_the_event_limit);
    tcase_add_test(tc, batch_refuses_more_events_than_the_limit);
    tcase_add_test(tc, batch_survives_bracket_bomb);
    tcase_add_test(tc, batch_free_is_safe_on_zeroed_and_freed_batch);
    tcase_add_test(tc, batch_owns_body_after_failure);
    suite_add_tcase(s, tc);
    return s;
}
