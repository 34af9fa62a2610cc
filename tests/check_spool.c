/* check_spool.c - the durable event store, one temp folder per test. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

#include <check.h>

#include "../core/spool.h"
#include "../core/util.h"

static char *dir, *path;
static struct spool *sp;
static struct gerr err;

/* What spool_load handed over; refuses once `accept` events are in. */
struct got {
    int accept;
    int n;
    struct spool_event *ev[16];
};

static struct got got;

static void
got_clear(void)
{
    for (int i = 0; i < got.n; i++)
        spool_event_free(got.ev[i]);
    memset(&got, 0, sizeof(got));
    got.accept = 16;
}

static int
collect(void *arg, struct spool_event *ev)
{
    struct got *g = arg;

    if (g->n >= g->accept)
        return 1;
    g->ev[g->n++] = ev;
    return 0;
}

static void
setup(void)
{
    dir = test_tmpdir();
    path = test_path(dir, "spool.db");
    memset(&err, 0, sizeof(err));
    memset(&got, 0, sizeof(got));
    got_clear();
    sp = spool_open(path, &err);
    ck_assert_msg(sp != NULL, "spool_open: %s", err.msg);
}

static void
teardown(void)
{
    got_clear();
    spool_close(sp);
    sp = NULL;
    free(path);
    test_rmtree(dir);
    free(dir);
    test_release();
}

static struct spool_event
event(const char *type, const char *contact, const char *webhook_id,
      int index, int size, const char *json)
{
    struct spool_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.received_at = 1700000000.25 + index;
    ev.type = (char *)type;
    ev.contact = (char *)contact;
    ev.webhook_id = (char *)webhook_id;
    ev.request_id = webhook_id ? "req-7" : NULL;
    ev.remote_addr = "192.0.2.44";
    ev.batch_index = index;
    ev.batch_size = size;
    ev.json = (char *)json;
    ev.len = strlen(json);
    return ev;
}

/* Three events stored in one transaction; ids[] gets theirs. */
static struct spool_event three[3];
static int64_t ids[3];

static void
insert_three(void)
{
    three[0] = event("contact_added", "Hn5Wc", NULL, 0, 1,
                     "{\"type\":\"contact_added\"}");
    three[1] = event("contact_opened_message", "Vq7Zt", "wh-1", 0, 2,
                     "{\"name\":\"caf\xc3\xa9 \\\"q\\\"\",\"n\":[1,2]}");
    three[2] = event("", "", "wh-1", 1, 2, "{}");
    ck_assert_int_eq(spool_begin(sp, true), 0);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(spool_insert(sp, &three[i]) == 0, "insert: %s",
                      spool_errmsg(sp));
        ids[i] = three[i].id;
    }
    ck_assert_int_eq(spool_commit(sp), 0);
}

static void
assert_same_event(const struct spool_event *got_ev,
                  const struct spool_event *want)
{
    ck_assert_int_eq(got_ev->id, want->id);
    ck_assert_double_eq(got_ev->received_at, want->received_at);
    ck_assert_str_eq(got_ev->type, want->type);
    ck_assert_str_eq(got_ev->contact, want->contact);
    ck_assert_pstr_eq(got_ev->webhook_id, want->webhook_id);
    ck_assert_pstr_eq(got_ev->request_id, want->request_id);
    ck_assert_pstr_eq(got_ev->remote_addr, want->remote_addr);
    ck_assert_int_eq(got_ev->batch_index, want->batch_index);
    ck_assert_int_eq(got_ev->batch_size, want->batch_size);
    ck_assert_uint_eq(got_ev->len, want->len);
    ck_assert_mem_eq(got_ev->json, want->json, want->len);
}

static int
load_all(void)
{
    got_clear();
    return spool_load(sp, 0, 100, collect, &got);
}

START_TEST(spool_open_creates_file)
{
    char *other = test_keep(test_path(dir, "fresh.db"));
    struct spool *s2;
    struct stat st;

    ck_assert_int_eq(stat(other, &st), -1);
    s2 = spool_open(other, &err);
    ck_assert_msg(s2 != NULL, "%s", err.msg);
    ck_assert_int_eq(stat(other, &st), 0);
    ck_assert_int_eq(spool_count(s2, SPOOL_PENDING), 0);
    spool_close(s2);
}
END_TEST

START_TEST(spool_insert_assigns_increasing_ids)
{
    insert_three();
    ck_assert_int_gt(ids[0], 0);
    ck_assert_int_gt(ids[1], ids[0]);
    ck_assert_int_gt(ids[2], ids[1]);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 3);
}
END_TEST

START_TEST(spool_load_round_trips_every_field_in_id_order)
{
    insert_three();
    ck_assert_int_eq(load_all(), 3);
    ck_assert_int_eq(got.n, 3);
    for (int i = 0; i < 3; i++) {
        assert_same_event(got.ev[i], &three[i]);
        ck_assert_int_eq(got.ev[i]->attempts, 0);
    }
    ck_assert_ptr_null(got.ev[0]->webhook_id);
    ck_assert_ptr_null(got.ev[0]->request_id);
    ck_assert_str_eq(got.ev[1]->webhook_id, "wh-1");
}
END_TEST

START_TEST(spool_load_honours_after_and_limit)
{
    insert_three();
    got_clear();
    ck_assert_int_eq(spool_load(sp, ids[0], 100, collect, &got), 2);
    ck_assert_int_eq(got.ev[0]->id, ids[1]);
    ck_assert_int_eq(got.ev[1]->id, ids[2]);
    got_clear();
    ck_assert_int_eq(spool_load(sp, 0, 1, collect, &got), 1);
    ck_assert_int_eq(got.ev[0]->id, ids[0]);
}
END_TEST

START_TEST(spool_finish_ok_marks_done)
{
    insert_three();
    ck_assert_int_eq(spool_begin(sp, false), 0);
    ck_assert_int_eq(spool_finish(sp, ids[1], true, NULL), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(load_all(), 2);
    ck_assert_int_eq(got.ev[0]->id, ids[0]);
    ck_assert_int_eq(got.ev[1]->id, ids[2]);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 2);
    ck_assert_int_eq(spool_count(sp, SPOOL_DONE), 1);
    ck_assert_int_eq(spool_count(sp, SPOOL_DEAD), 0);
}
END_TEST

START_TEST(spool_finish_error_marks_dead_and_counts_attempts)
{
    insert_three();
    ck_assert_int_eq(spool_begin(sp, false), 0);
    ck_assert_int_eq(spool_finish(sp, ids[0], false, "boom"), 0);
    ck_assert_int_eq(spool_commit(sp), 0);
    ck_assert_int_eq(spool_count(sp, SPOOL_DEAD), 1);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 2);
    ck_assert_int_eq(spool_count(sp, SPOOL_DONE), 0);
    ck_assert_int_eq(load_all(), 2);
    ck_assert_int_eq(got.ev[0]->id, ids[1]);

    got_clear();
    ck_assert_int_eq(spool_each_dead(sp, collect, &got), 1);
    ck_assert_int_eq(got.ev[0]->id, ids[0]);
    ck_assert_int_eq(got.ev[0]->attempts, 1);
    ck_assert_str_eq(got.ev[0]->last_error, "boom");

    ck_assert_int_eq(spool_finish(sp, ids[0], false, "boom again"), 0);
    got_clear();
    ck_assert_int_eq(spool_each_dead(sp, collect, &got), 1);
    ck_assert_int_eq(got.ev[0]->attempts, 2);
    ck_assert_str_eq(got.ev[0]->last_error, "boom again");
}
END_TEST

START_TEST(spool_data_survives_reopen)
{
    insert_three();
    ck_assert_int_eq(spool_finish(sp, ids[2], true, NULL), 0);
    spool_close(sp);
    sp = spool_open(path, &err);
    ck_assert_msg(sp != NULL, "reopen: %s", err.msg);
    ck_assert_int_eq(load_all(), 2);
    assert_same_event(got.ev[0], &three[0]);
    assert_same_event(got.ev[1], &three[1]);
    ck_assert_int_eq(spool_count(sp, SPOOL_DONE), 1);
}
END_TEST

/* An event a crash left running is pending again after a reopen. */
START_TEST(spool_reopen_recovers_running_events)
{
    insert_three();
    ck_assert_int_eq(spool_record(sp, ids[1], SPOOL_SCHEDULED, 1, "flaky", 0),
                     0);
    got_clear();
    ck_assert_int_eq(spool_load_due(sp, util_now(), 10, collect, &got), 1);
    ck_assert_int_eq(got.ev[0]->id, ids[1]);
    ck_assert_int_eq(load_all(), 2);
    ck_assert_int_eq(got.ev[0]->id, ids[0]);
    ck_assert_int_eq(got.ev[1]->id, ids[2]);
    spool_close(sp);
    sp = spool_open(path, &err);
    ck_assert_msg(sp != NULL, "reopen: %s", err.msg);
    ck_assert_int_eq(load_all(), 3);
    ck_assert_int_eq(got.ev[1]->id, ids[1]);
    ck_assert_int_eq(got.ev[1]->attempts, 1);
}
END_TEST

START_TEST(spool_second_open_is_refused_while_first_is_open)
{
    struct spool *s2 = spool_open(path, &err);
    char want[4200];

    ck_assert_ptr_null(s2);
    snprintf(want, sizeof(want), "%s: in use by another grwhd", path);
    ck_assert_str_eq(err.msg, want);
    insert_three();
    spool_close(sp);
    sp = spool_open(path, &err);
    ck_assert_msg(sp != NULL, "after close: %s", err.msg);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 3);
}
END_TEST

/* Another name for the same file is the same spool. */
START_TEST(spool_open_through_a_symlink_is_refused_too)
{
    char *link = test_keep(test_path(dir, "alias.db"));
    struct spool *s2;

    ck_assert_int_eq(symlink(path, link), 0);
    s2 = spool_open(link, &err);
    ck_assert_ptr_null(s2);
    ck_assert_msg(strstr(err.msg, "in use by another grwhd") != NULL, "%s",
                  err.msg);
}
END_TEST

START_TEST(spool_load_stops_when_callback_refuses)
{
    insert_three();
    got_clear();
    got.accept = 2;
    ck_assert_int_eq(spool_load(sp, 0, 100, collect, &got), 2);
    ck_assert_int_eq(got.n, 2);
    ck_assert_int_eq(got.ev[0]->id, ids[0]);
    ck_assert_int_eq(got.ev[1]->id, ids[1]);
    got_clear();
    got.accept = 0;
    ck_assert_int_eq(spool_load(sp, 0, 100, collect, &got), 0);
    /* The statement was reset: the next load starts over. */
    ck_assert_int_eq(load_all(), 3);
}
END_TEST

START_TEST(spool_rollback_leaves_nothing)
{
    struct spool_event ev = event("t", "c", NULL, 0, 1, "{}");

    ck_assert_int_eq(spool_begin(sp, true), 0);
    ck_assert_int_eq(spool_insert(sp, &ev), 0);
    ck_assert_int_eq(spool_insert(sp, &ev), 0);
    spool_rollback(sp);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 0);
    ck_assert_int_eq(load_all(), 0);
    insert_three();
    ck_assert_int_eq(load_all(), 3);
}
END_TEST

START_TEST(spool_insert_refuses_event_without_type)
{
    struct spool_event ev = event("t", "c", NULL, 0, 1, "{}");

    ev.type = NULL;
    ck_assert_int_eq(spool_begin(sp, true), 0);
    ck_assert_int_eq(spool_insert(sp, &ev), -1);
    spool_rollback(sp);
    ck_assert_int_eq(spool_count(sp, SPOOL_PENDING), 0);
}
END_TEST

Suite *
spool_suite(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("spool");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, spool_open_creates_file);
    tcase_add_test(tc, spool_insert_assigns_increasing_ids);
    tcase_add_test(tc, spool_load_round_trips_every_field_in_id_order);
    tcase_add_test(tc, spool_load_honours_after_and_limit);
    tcase_add_test(tc, spool_finish_ok_marks_done);
    tcase_add_test(tc, spool_finish_error_marks_dead_and_counts_attempts);
    tcase_add_test(tc, spool_data_survives_reopen);
    tcase_add_test(tc, spool_reopen_recovers_running_events);
    tcase_add_test(tc, spool_second_open_is_refused_while_first_is_open);
    tcase_add_test(tc, spool_open_through_a_symlink_is_refused_too);
    tcase_add_test(tc, spool_load_stops_when_callback_refuses);
    tcase_add_test(tc, spool_rollback_leaves_nothing);
    tcase_add_test(tc, spool_insert_refuses_event_without_type);
    suite_add_tcase(s, tc);
    return s;
}
