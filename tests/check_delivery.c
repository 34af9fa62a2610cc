/* check_delivery.c - backoff, delivery keys, the key set, the spool's
 * retry and dead-letter states, legacy callbacks and type suggestions. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>
#include <cJSON.h>

#include "../core/dedupe.h"
#include "../core/intake.h"
#include "../core/keyset.h"
#include "../core/legacy.h"
#include "../core/spool.h"
#include "../core/util.h"
#include "../lua/types.h"

/* ---- backoff ----------------------------------------------------------- */

START_TEST(backoff_doubles_from_one_second)
{
    /* u = 1 gives the top of each step: 1, 2, 4, 8 ... */
    double want = 1;

    for (int attempt = 1; attempt <= 10; attempt++) {
        ck_assert_double_eq_tol(intake_backoff(attempt, 1.0), want, 1e-9);
        want *= 2;
    }
}
END_TEST

START_TEST(backoff_is_capped_at_ten_minutes)
{
    ck_assert_double_eq_tol(intake_backoff(11, 1.0), 600, 1e-9);
    ck_assert_double_eq_tol(intake_backoff(40, 1.0), 600, 1e-9);
    ck_assert_double_eq_tol(intake_backoff(1000, 0.0), 300, 1e-9);
}
END_TEST

START_TEST(backoff_jitter_stays_in_upper_half)
{
    for (int attempt = 1; attempt <= 12; attempt++) {
        double top = intake_backoff(attempt, 1.0);
        double low = intake_backoff(attempt, 0.0);
        double mid = intake_backoff(attempt, 0.5);

        ck_assert_double_eq_tol(low, top / 2, 1e-9);
        ck_assert(mid > low && mid < top);
    }
}
END_TEST

/* ---- delivery keys ------------------------------------------------------ */

static void
key(const char *wid, int index, const char *json, unsigned char *out)
{
    ck_assert_int_eq(dedupe_key(wid, index, json, json ? strlen(json) : 0,
                                out), 0);
}

START_TEST(dedupe_key_follows_webhook_id_and_index)
{
    unsigned char a[GRWHD_DEDUPE_KEY], b[GRWHD_DEDUPE_KEY];

    /* The header decides: a retry may carry other bytes in its body. */
    key("6f1c", 0, "{\"a\":1}", a);
    key("6f1c", 0, "{\"a\":2}", b);
    ck_assert_mem_eq(a, b, GRWHD_DEDUPE_KEY);
    key("6f1c", 1, "{\"a\":1}", b);
    ck_assert(memcmp(a, b, GRWHD_DEDUPE_KEY) != 0);
    key("6f1d", 0, "{\"a\":1}", b);
    ck_assert(memcmp(a, b, GRWHD_DEDUPE_KEY) != 0);
}
END_TEST

START_TEST(dedupe_key_without_header_is_the_body)
{
    unsigned char a[GRWHD_DEDUPE_KEY], b[GRWHD_DEDUPE_KEY];

    key(NULL, 0, "{\"a\":1}", a);
    key(NULL, 3, "{\"a\":1}", b);
    ck_assert_mem_eq(a, b, GRWHD_DEDUPE_KEY);
    key(NULL, 0, "{\"a\":2}", b);
    ck_assert(memcmp(a, b, GRWHD_DEDUPE_KEY) != 0);
    /* A body can never pose as a header key. */
    key("x", 0, NULL, b);
    ck_assert(memcmp(a, b, GRWHD_DEDUPE_KEY) != 0);
}
END_TEST

/* ---- key set ------------------------------------------------------------ */

static void
nth_key(unsigned i, unsigned char *k)
{
    ck_assert_int_eq(dedupe_key(NULL, 0, (const char *)&i, sizeof(i), k), 0);
}

START_TEST(keyset_finds_what_was_added_through_growth)
{
    struct keyset ks = {0};
    unsigned char k[GRWHD_DEDUPE_KEY];

    for (unsigned i = 0; i < 5000; i++) {
        nth_key(i, k);
        ck_assert(!keyset_has(&ks, k));
        ck_assert(keyset_add(&ks, k));
    }
    ck_assert_uint_eq(ks.n, 5000);
    ck_assert(ks.cap >= 10000);
    for (unsigned i = 0; i < 5000; i++) {
        nth_key(i, k);
        ck_assert(keyset_has(&ks, k));
    }
    nth_key(5000, k);
    ck_assert(!keyset_has(&ks, k));
    keyset_free(&ks);
}
END_TEST

START_TEST(keyset_adds_once_clears_and_merges)
{
    struct keyset a = {0}, b = {0};
    unsigned char k[GRWHD_DEDUPE_KEY], zero[GRWHD_DEDUPE_KEY] = {0};

    nth_key(1, k);
    ck_assert(keyset_add(&a, k));
    ck_assert(keyset_add(&a, k));
    ck_assert_uint_eq(a.n, 1);
    /* The all-zero key is a key like any other. */
    ck_assert(!keyset_has(&a, zero));
    ck_assert(keyset_add(&a, zero));
    ck_assert(keyset_has(&a, zero));
    nth_key(2, k);
    ck_assert(keyset_add(&b, k));
    ck_assert(keyset_merge(&b, &a));
    ck_assert_uint_eq(b.n, 3);
    keyset_clear(&a);
    ck_assert_uint_eq(a.n, 0);
    ck_assert(!keyset_has(&a, zero));
    ck_assert(keyset_has(&b, zero));
    keyset_free(&a);
    keyset_free(&b);
}
END_TEST

/* ---- spool states ------------------------------------------------------- */

static char *dir;
static struct spool *sp;

static void
spool_setup(void)
{
    struct gerr err;

    dir = test_tmpdir();
    sp = spool_open(test_keep(test_path(dir, "spool.db")), &err);
    ck_assert_msg(sp != NULL, "%s", err.msg);
}

static void
spool_teardown(void)
{
    spool_close(sp);
    sp = NULL;
    test_rmtree(dir);
    free(dir);
    test_release();
}

static int64_t
add_event(const char *type)
{
    struct spool_event ev = {
        .received_at = util_now(),
        .type = (char *)type,
        .contact = "c1",
        .remote_addr = "127.0.0.1",
        .batch_size = 1,
        .json = "{}",
        .len = 2,
    };

    ck_assert_int_eq(spool_begin(sp, true), 0);
    ck_assert_int_eq(spool_insert(sp, &ev), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    return ev.id;
}

struct ids {
    int n;
    int64_t id[8];
    int attempts[8];
};

static int
take(void *arg, struct spool_event *ev)
{
    struct ids *ids = arg;

    if (ids->n == 8) {
        return 1;
    }
    ids->attempts[ids->n] = ev->attempts;
    ids->id[ids->n++] = ev->id;
    spool_event_free(ev);
    return 0;
}

static void
record(int64_t id, enum spool_state st, int attempts, const char *error,
       double next_at)
{
    ck_assert_int_eq(spool_begin(sp, false), 0);
    ck_assert_int_eq(spool_record(sp, id, st, attempts, error, next_at), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
}

START_TEST(spool_scheduled_event_is_due_only_at_its_time)
{
    int64_t id = add_event("t");
    double now = util_now();
    struct ids got = {0};

    record(id, SPOOL_SCHEDULED, 1, "boom", now + 60);
    ck_assert_double_eq_tol(spool_next_due(sp), now + 60, 1e-3);
    ck_assert_int_eq(spool_count(sp, SPOOL_SCHEDULED), 1);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 0);
    ck_assert_int_eq(spool_load_due(sp, now, 10, take, &got), 0);
    ck_assert_int_eq(spool_load_due(sp, now + 61, 10, take, &got), 1);
    ck_assert_int_eq(got.id[0], id);
    ck_assert_int_eq(got.attempts[0], 1);
    /* Handed out once: now running, neither due nor pending. */
    ck_assert_int_eq(spool_load_due(sp, now + 61, 10, take, &got), 0);
    ck_assert_double_eq(spool_next_due(sp), 0);
    ck_assert_int_eq(spool_count(sp, SPOOL_SCHEDULED), 0);
    ck_assert_int_eq(spool_backlog(sp), 1);
}
END_TEST

START_TEST(spool_running_event_is_pending_after_reopen)
{
    int64_t id = add_event("t");
    struct ids got = {0};
    struct gerr err;
    char *path = test_path(dir, "spool.db");

    record(id, SPOOL_RUNNING, 2, NULL, 0);
    ck_assert_int_eq(spool_load(sp, 0, 10, take, &got), 0);
    spool_close(sp);
    sp = spool_open(path, &err);
    free(path);
    ck_assert_msg(sp != NULL, "%s", err.msg);
    ck_assert_int_eq(spool_load(sp, 0, 10, take, &got), 1);
    /* The interrupted attempt is counted. */
    ck_assert_int_eq(got.attempts[0], 2);
}
END_TEST

START_TEST(spool_event_that_crashed_its_last_attempt_is_buried)
{
    int64_t last = add_event("last"), early = add_event("early");
    struct gerr err;
    char *path = test_path(dir, "spool.db");

    record(last, SPOOL_RUNNING, 8, NULL, 0);
    record(early, SPOOL_RUNNING, 3, NULL, 0);
    spool_close(sp);
    sp = spool_open(path, &err);
    free(path);
    ck_assert_msg(sp != NULL, "%s", err.msg);
    ck_assert_int_eq(spool_bury(sp, 8), 1);
    ck_assert_int_eq(spool_count(sp, SPOOL_DEAD), 1);
    ck_assert_int_eq(spool_backlog(sp), 1);
    ck_assert_int_eq(spool_bury(sp, 8), 0);
}
END_TEST

struct dead {
    int n;
    int64_t id;
    int attempts;
    char error[64];
};

static int
take_dead(void *arg, struct spool_event *ev)
{
    struct dead *d = arg;

    d->n++;
    d->id = ev->id;
    d->attempts = ev->attempts;
    snprintf(d->error, sizeof(d->error), "%s",
             ev->last_error ? ev->last_error : "");
    spool_event_free(ev);
    return 0;
}

START_TEST(spool_dead_event_is_listed_retried_and_purged)
{
    int64_t a = add_event("a"), b = add_event("b");
    struct dead d = {0};
    struct spool_stats st;
    int64_t only_a[] = {a};

    record(a, SPOOL_DEAD, 8, "crm down", 0);
    record(b, SPOOL_DEAD, 8, "still down", 0);
    ck_assert_int_eq(spool_each_dead(sp, take_dead, &d), 2);
    ck_assert_int_eq(d.id, b);
    ck_assert_int_eq(d.attempts, 8);
    ck_assert_str_eq(d.error, "still down");
    ck_assert_int_eq(spool_stats(sp, &st), 0);
    ck_assert_int_eq(st.dead, 2);
    ck_assert_int_eq(spool_backlog(sp), 0);

    ck_assert_int_eq(spool_requeued(sp), 0);
    ck_assert_int_eq(spool_retry(sp, only_a, 1), 1);
    ck_assert_int_eq(spool_retry(sp, only_a, 1), 0);   /* not dead now */
    ck_assert_int_eq(spool_count(sp, SPOOL_SCHEDULED), 1);
    ck_assert_int_eq(spool_requeued(sp), 1);
    ck_assert(spool_next_due(sp) <= util_now());
    ck_assert_int_eq(spool_purge_dead(sp), 1);
    ck_assert_int_eq(spool_count(sp, SPOOL_DEAD), 0);
    ck_assert_int_eq(spool_retry(sp, NULL, 0), 0);
    ck_assert_int_eq(spool_backlog(sp), 1);
}
END_TEST

struct seen_keys {
    int n;
};

static void
count_key(void *arg, const unsigned char *k, double seen)
{
    (void)k;
    (void)seen;
    ((struct seen_keys *)arg)->n++;
}

START_TEST(spool_prunes_old_done_events_and_keys)
{
    int64_t old = add_event("old"), young = add_event("young");
    unsigned char k[GRWHD_DEDUPE_KEY];
    struct seen_keys sk = {0};
    double now = util_now();

    record(old, SPOOL_DONE, 1, NULL, 0);
    record(young, SPOOL_DONE, 1, NULL, 0);
    nth_key(1, k);
    ck_assert_int_eq(spool_begin(sp, false), 0);
    ck_assert_int_eq(spool_remember_key(sp, k, now - 100), 0);
    nth_key(2, k);
    ck_assert_int_eq(spool_remember_key(sp, k, now), 0);
    ck_assert_int_eq(spool_commit(sp), 0);

    ck_assert_int_eq(spool_begin(sp, false), 0);
    /* Nothing finished before now - 10 s; the first key is older. */
    ck_assert_int_eq(spool_prune(sp, now - 10, now - 50, 100), 1);
    ck_assert_int_eq(spool_prune(sp, now + 1, now - 50, 100), 4);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(spool_count(sp, SPOOL_DONE), 0);
    ck_assert_int_eq(spool_each_key(sp, now - 1000, count_key, &sk), 1);
}
END_TEST

START_TEST(spool_keys_of_one_commit_share_a_row)
{
    unsigned char keys[3 * GRWHD_DEDUPE_KEY];
    struct seen_keys sk = {0};

    for (unsigned i = 0; i < 3; i++)
        nth_key(i, keys + i * GRWHD_DEDUPE_KEY);
    ck_assert_int_eq(spool_begin(sp, false), 0);
    ck_assert_int_eq(spool_remember_keys(sp, keys, 3, util_now()), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(spool_each_key(sp, 0, count_key, &sk), 3);
    ck_assert_int_eq(sk.n, 3);
}
END_TEST

/* ---- legacy callbacks --------------------------------------------------- */

static cJSON *
legacy(const struct legacy_param *p, size_t n)
{
    char *text = legacy_event(p, n, "secret", 1709733600.0);
    cJSON *doc;

    ck_assert_ptr_nonnull(text);
    doc = cJSON_Parse(text);
    free(text);
    ck_assert_ptr_nonnull(doc);
    return doc;
}

static const char *
str_at(cJSON *doc, const char *a, const char *b, const char *c)
{
    cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, a);

    if (b)
        v = cJSON_GetObjectItemCaseSensitive(v, b);
    if (c)
        v = cJSON_GetObjectItemCaseSensitive(v, c);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

START_TEST(legacy_subscribe_becomes_contact_added)
{
    const struct legacy_param p[] = {
        {"action", "subscribe"},   {"CONTACT_ID", "Hn5Wc"},
        {"contact_email", "s@example.org"}, {"CAMPAIGN_ID", "Lm4Pw"},
        {"campaign_name", "demo"}, {"ACCOUNT_ID", "Ab9Kx"},
        {"secret", "hunter2"},
    };
    cJSON *doc = legacy(p, sizeof(p) / sizeof(p[0]));

    ck_assert_str_eq(str_at(doc, "type", NULL, NULL), "contact_added");
    ck_assert_str_eq(str_at(doc, "contact", "contactId", NULL), "Hn5Wc");
    ck_assert_str_eq(str_at(doc, "contact", "campaign", "name"), "demo");
    ck_assert_str_eq(str_at(doc, "account", "accountId", NULL), "Ab9Kx");
    ck_assert_str_eq(str_at(doc, "event", "occurredAt", NULL),
                     "2024-03-06T14:00:00+00:00");
    ck_assert_str_eq(str_at(doc, "callback", "action", NULL), "subscribe");
    /* The secret never travels on into the event. */
    ck_assert_ptr_null(str_at(doc, "callback", "secret", NULL));
    ck_assert_ptr_null(cJSON_GetObjectItem(doc, "message"));
    cJSON_Delete(doc);
}
END_TEST

START_TEST(legacy_maps_each_action)
{
    static const char *const map[][2] = {
        {"open", "contact_opened_message"},
        {"click", "contact_clicked_message_link"},
        {"unsubscribe", "contact_removed_link"},
        {"goal", "callback_goal"},
        {"survey", "callback_survey"},
    };

    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        const struct legacy_param p[] = {{"action", map[i][0]},
                                         {"LINK_ID", "Ct8Jm"}};
        cJSON *doc = legacy(p, 2);

        ck_assert_str_eq(str_at(doc, "type", NULL, NULL), map[i][1]);
        ck_assert_str_eq(str_at(doc, "clickTrack", "clickTrackId", NULL),
                         "Ct8Jm");
        cJSON_Delete(doc);
    }
}
END_TEST

/* libmicrohttpd takes "SECRET=" as the secret, so it is dropped too. */
START_TEST(legacy_names_match_ignoring_case)
{
    const struct legacy_param p[] = {
        {"ACTION", "subscribe"}, {"contact_id", "Hn5Wc"},
        {"SECRET", "hunter2"},   {"Secret", "hunter3"},
    };
    cJSON *doc = legacy(p, sizeof(p) / sizeof(p[0]));
    char *text = cJSON_PrintUnformatted(doc);

    ck_assert_str_eq(str_at(doc, "type", NULL, NULL), "contact_added");
    ck_assert_str_eq(str_at(doc, "contact", "contactId", NULL), "Hn5Wc");
    ck_assert_msg(strstr(text, "hunter") == NULL, "secret kept: %s", text);
    free(text);
    cJSON_Delete(doc);
}
END_TEST

START_TEST(legacy_without_action_is_no_event)
{
    const struct legacy_param p[] = {{"CONTACT_ID", "x"}, {"action", ""}};

    ck_assert_ptr_null(legacy_event(p, 1, "secret", 0));
    ck_assert_ptr_null(legacy_event(p, 2, "secret", 0));
}
END_TEST

/* ---- type names --------------------------------------------------------- */

/* The metrics keep one counter per known type, sized by the count. */
START_TEST(types_count_matches_the_list)
{
    for (int i = 0; i < GRWHD_TYPES_KNOWN; i++)
        ck_assert_ptr_nonnull(types_known[i]);
    ck_assert_ptr_null(types_known[GRWHD_TYPES_KNOWN]);
}
END_TEST

START_TEST(types_suggest_the_meant_type)
{
    ck_assert(types_is_known("contact_added"));
    ck_assert(!types_is_known("contact_subscribed"));
    ck_assert_str_eq(types_suggest("contact_subscribed"), "contact_added");
    ck_assert_str_eq(types_suggest("contact_unsubscribed"),
                     "contact_removed_link");
    ck_assert_str_eq(types_suggest("contact_opend_message"),
                     "contact_opened_message");
    ck_assert_str_eq(types_suggest("contact_clicked_link"),
                     "contact_clicked_message_link");
    ck_assert_ptr_null(types_suggest("payment_received"));
}
END_TEST

Suite *
delivery_suite(void)
{
    Suite *s = suite_create("delivery");
    TCase *tc = tcase_create("pure");

    tcase_add_test(tc, backoff_doubles_from_one_second);
    tcase_add_test(tc, backoff_is_capped_at_ten_minutes);
    tcase_add_test(tc, backoff_jitter_stays_in_upper_half);
    tcase_add_test(tc, dedupe_key_follows_webhook_id_and_index);
    tcase_add_test(tc, dedupe_key_without_header_is_the_body);
    tcase_add_test(tc, keyset_finds_what_was_added_through_growth);
    tcase_add_test(tc, keyset_adds_once_clears_and_merges);
    tcase_add_test(tc, legacy_subscribe_becomes_contact_added);
    tcase_add_test(tc, legacy_maps_each_action);
    tcase_add_test(tc, legacy_names_match_ignoring_case);
    tcase_add_test(tc, legacy_without_action_is_no_event);
    tcase_add_test(tc, types_count_matches_the_list);
    tcase_add_test(tc, types_suggest_the_meant_type);
    suite_add_tcase(s, tc);

    tc = tcase_create("spool_states");
    tcase_add_checked_fixture(tc, spool_setup, spool_teardown);
    tcase_add_test(tc, spool_scheduled_event_is_due_only_at_its_time);
    tcase_add_test(tc, spool_running_event_is_pending_after_reopen);
    tcase_add_test(tc, spool_event_that_crashed_its_last_attempt_is_buried);
    tcase_add_test(tc, spool_dead_event_is_listed_retried_and_purged);
    tcase_add_test(tc, spool_prunes_old_done_events_and_keys);
    tcase_add_test(tc, spool_keys_of_one_commit_share_a_row);
    suite_add_tcase(s, tc);
    return s;
}
