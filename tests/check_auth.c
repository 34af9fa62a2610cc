/* check_auth.c - the shared secrets: matching, rotation, secret files. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "../core/auth.h"

static struct auth a;
static struct gerr err;
static char *dir;

static void
setup(void)
{
    auth_init(&a);
    memset(&err, 0, sizeof(err));
    dir = test_tmpdir();
}

static void
teardown(void)
{
    test_rmtree(dir);
    free(dir);
    dir = NULL;
    test_release();
}

static void
add(const char *secret)
{
    ck_assert_msg(auth_add(&a, secret, strlen(secret), &err) == 0,
                  "auth_add: %s", err.msg);
}

static bool
check(const char *given)
{
    return auth_check(&a, given, strlen(given));
}

/* Writes text to a file in the test's folder; returns its path. */
static char *
secret_file(const char *text)
{
    char *path = test_keep(test_path(dir, "secrets"));

    test_write_file(path, text, strlen(text));
    return path;
}

START_TEST(auth_accepts_configured_secret)
{
    add("s3cret-Token");
    ck_assert(check("s3cret-Token"));
}
END_TEST

START_TEST(auth_rejects_wrong_secret)
{
    add("s3cret-Token");
    ck_assert(!check("s3cret-Tokem"));
    ck_assert(!check("S3CRET-TOKEN"));
}
END_TEST

START_TEST(auth_rejects_prefix_and_longer_string)
{
    add("s3cret-Token");
    ck_assert(!check("s3cret-Toke"));
    ck_assert(!check("s"));
    ck_assert(!check("s3cret-Token1"));
    ck_assert(!check("s3cret-Token\n"));
    /* The length given wins over the NUL: a longer buffer is another key. */
    ck_assert(!auth_check(&a, "s3cret-Token\0x", 14));
}
END_TEST

START_TEST(auth_rejects_empty_and_null)
{
    add("s3cret-Token");
    ck_assert(!auth_check(&a, "", 0));
    ck_assert(!auth_check(&a, NULL, 0));
    ck_assert(!auth_check(&a, NULL, 12));
}
END_TEST

START_TEST(auth_accepts_every_rotated_secret)
{
    add("old-secret");
    add("new-secret");
    add("next-secret");
    ck_assert_uint_eq(a.n, 3);
    ck_assert(check("old-secret"));
    ck_assert(check("new-secret"));
    ck_assert(check("next-secret"));
    ck_assert(!check("other-secret"));
}
END_TEST

START_TEST(auth_open_only_without_secrets)
{
    ck_assert(auth_open(&a));
    add("x");
    ck_assert(!auth_open(&a));
}
END_TEST

START_TEST(auth_add_refuses_empty_secret)
{
    ck_assert_int_eq(auth_add(&a, "", 0, &err), -1);
    ck_assert_str_eq(err.msg, "empty secret");
    ck_assert(auth_open(&a));
}
END_TEST

START_TEST(auth_add_takes_longest_secret_and_refuses_longer)
{
    char s[GRWHD_AUTH_SECRET_MAX + 2];

    memset(s, 'k', GRWHD_AUTH_SECRET_MAX + 1);
    s[GRWHD_AUTH_SECRET_MAX + 1] = '\0';
    ck_assert_int_eq(auth_add(&a, s, GRWHD_AUTH_SECRET_MAX + 1, &err), -1);
    ck_assert_str_eq(err.msg, "secret longer than 1024 bytes");
    ck_assert_int_eq(auth_add(&a, s, GRWHD_AUTH_SECRET_MAX, &err), 0);
    ck_assert(auth_check(&a, s, GRWHD_AUTH_SECRET_MAX));
    ck_assert(!auth_check(&a, s, GRWHD_AUTH_SECRET_MAX + 1));
}
END_TEST

START_TEST(auth_refuses_more_than_max_secrets)
{
    char s[32];

    for (int i = 0; i < GRWHD_AUTH_MAX_SECRETS; i++) {
        snprintf(s, sizeof(s), "secret-%d", i);
        add(s);
    }
    ck_assert_int_eq(auth_add(&a, "one-too-many", 12, &err), -1);
    ck_assert_str_eq(err.msg, "more than 16 secrets");
    ck_assert_uint_eq(a.n, GRWHD_AUTH_MAX_SECRETS);
    ck_assert(!check("one-too-many"));
    ck_assert(check("secret-0"));
    ck_assert(check("secret-15"));
}
END_TEST

START_TEST(auth_counts_secrets_that_need_encoding)
{
    add("Plain-secret_0.9~");
    ck_assert_uint_eq(a.need_encoding, 0);
    add("a+b");
    add("c%41d");
    add("e f");
    add("safe2");
    ck_assert_uint_eq(a.need_encoding, 3);
    ck_assert_uint_eq(a.n, 5);
}
END_TEST

START_TEST(auth_file_skips_blanks_comments_and_crlf)
{
    char *path = secret_file("# the secrets\n"
                             "\n"
                             "alpha\r\n"
                             "   \n"
                             "beta  \t\n"
                             "#gamma\n"
                             "delta");

    ck_assert_msg(auth_add_file(&a, path, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(a.n, 3);
    ck_assert(check("alpha"));
    ck_assert(check("beta"));
    ck_assert(check("delta"));
    ck_assert(!check("alpha\r"));
    ck_assert(!check("#gamma"));
    ck_assert(!check("gamma"));
    ck_assert(!check("# the secrets"));
}
END_TEST

START_TEST(auth_file_names_path_and_line_of_long_line)
{
    char text[3000];
    char *path, want[4200];

    memset(text, 0, sizeof(text));
    strcpy(text, "ok-one\n# fine\n");
    memset(text + strlen(text), 'x', 2000);
    strcat(text, "\nok-two\n");
    path = secret_file(text);
    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    snprintf(want, sizeof(want), "%s:3: secret longer than 1024 bytes",
             path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

/* Trailing blanks are not part of the secret, so not of its length. */
START_TEST(auth_file_trims_before_measuring)
{
    static char text[2 * GRWHD_AUTH_SECRET_MAX + 3000];
    char *path;

    memset(text, 0, sizeof(text));
    memset(text, 'k', GRWHD_AUTH_SECRET_MAX);
    strcat(text, " \t\r\nomega");
    memset(text + strlen(text), ' ', 2000);
    strcat(text, "\n");
    path = secret_file(text);
    ck_assert_msg(auth_add_file(&a, path, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(a.n, 2);
    ck_assert(auth_check(&a, text, GRWHD_AUTH_SECRET_MAX));
    ck_assert(check("omega"));
    ck_assert(!check("omega "));
}
END_TEST

START_TEST(auth_file_names_a_nul_byte)
{
    static const char text[] = "alpha\neps\0ilon\n";
    char *path = test_keep(test_path(dir, "secrets")), want[4200];

    test_write_file(path, text, sizeof(text) - 1);
    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    snprintf(want, sizeof(want), "%s:2: a NUL byte in the line", path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

/* A device or a FIFO never ends; a huge file is not a list of secrets. */
START_TEST(auth_file_must_be_a_small_regular_file)
{
    static char big[80000];
    char *path = test_keep(test_path(dir, "zero")), want[4200];

    ck_assert_int_eq(symlink("/dev/zero", path), 0);
    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    snprintf(want, sizeof(want), "%s: not a regular file", path);
    ck_assert_str_eq(err.msg, want);

    ck_assert_int_eq(auth_add_file(&a, dir, &err), -1);
    snprintf(want, sizeof(want), "%s: is a folder", dir);
    ck_assert_str_eq(err.msg, want);

    memset(big, '#', sizeof(big) - 1);
    path = secret_file(big);
    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    ck_assert_msg(strstr(err.msg, "larger than 64 KiB") != NULL, "%s",
                  err.msg);
    ck_assert(auth_open(&a));
    /* 64 KiB itself is fine: one secret and comments. */
    memset(big, '#', 65536);
    big[65534] = '\n';
    big[65535] = 'k';
    big[65536] = '\0';
    path = secret_file(big);
    ck_assert_msg(auth_add_file(&a, path, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(a.n, 1);
}
END_TEST

/* 1024 bytes is a valid secret, so a CRLF file must be able to hold it. */
START_TEST(auth_file_takes_longest_secret_with_crlf)
{
    char text[GRWHD_AUTH_SECRET_MAX + 16];
    char *path;

    memset(text, 'k', GRWHD_AUTH_SECRET_MAX);
    strcpy(text + GRWHD_AUTH_SECRET_MAX, "\r\nshort\r\n");
    path = secret_file(text);
    ck_assert_msg(auth_add_file(&a, path, &err) == 0, "%s", err.msg);
    ck_assert_uint_eq(a.n, 2);
    ck_assert(auth_check(&a, text, GRWHD_AUTH_SECRET_MAX));
    ck_assert(check("short"));
}
END_TEST

START_TEST(auth_file_names_line_of_secret_past_max)
{
    char text[17 * 16] = "", line[16], *path, want[4200];

    for (int i = 0; i <= GRWHD_AUTH_MAX_SECRETS; i++) {
        snprintf(line, sizeof(line), "s%d\n", i);
        strcat(text, line);
    }
    path = secret_file(text);
    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    snprintf(want, sizeof(want), "%s:17: more than 16 secrets", path);
    ck_assert_str_eq(err.msg, want);
}
END_TEST

START_TEST(auth_file_missing_is_an_error)
{
    char *path = test_keep(test_path(dir, "no-such-file"));
    char want[4200];

    ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
    snprintf(want, sizeof(want), "%s: No such file or directory", path);
    ck_assert_str_eq(err.msg, want);
    ck_assert(auth_open(&a));
}
END_TEST

/* An emptied file would otherwise leave no secret: every request in. */
START_TEST(auth_file_without_a_secret_is_an_error)
{
    static const char *const texts[] = {"", "\n\n", "# none yet\n  \t\n"};
    char want[4200];

    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        char *path = secret_file(texts[i]);

        auth_init(&a);
        ck_assert_int_eq(auth_add_file(&a, path, &err), -1);
        snprintf(want, sizeof(want), "%s: no secret in the file", path);
        ck_assert_str_eq(err.msg, want);
    }
}
END_TEST

START_TEST(auth_same_compares_the_sets)
{
    struct auth b;

    add("one");
    add("two");
    auth_init(&b);
    ck_assert(auth_add(&b, "one", 3, &err) == 0);
    ck_assert(!auth_same(&a, &b));
    ck_assert(auth_add(&b, "two", 3, &err) == 0);
    ck_assert(auth_same(&a, &b));
    auth_init(&b);
    ck_assert(auth_add(&b, "one", 3, &err) == 0);
    ck_assert(auth_add(&b, "tw0", 3, &err) == 0);
    ck_assert(!auth_same(&a, &b));
}
END_TEST

Suite *
auth_suite(void)
{
    Suite *s = suite_create("auth");
    TCase *tc = tcase_create("auth");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, auth_accepts_configured_secret);
    tcase_add_test(tc, auth_rejects_wrong_secret);
    tcase_add_test(tc, auth_rejects_prefix_and_longer_string);
    tcase_add_test(tc, auth_rejects_empty_and_null);
    tcase_add_test(tc, auth_accepts_every_rotated_secret);
    tcase_add_test(tc, auth_open_only_without_secrets);
    tcase_add_test(tc, auth_add_refuses_empty_secret);
    tcase_add_test(tc, auth_add_takes_longest_secret_and_refuses_longer);
    tcase_add_test(tc, auth_refuses_more_than_max_secrets);
    tcase_add_test(tc, auth_counts_secrets_that_need_encoding);
    tcase_add_test(tc, auth_file_skips_blanks_comments_and_crlf);
    tcase_add_test(tc, auth_file_names_path_and_line_of_long_line);
    tcase_add_test(tc, auth_file_trims_before_measuring);
    tcase_add_test(tc, auth_file_names_a_nul_byte);
    tcase_add_test(tc, auth_file_must_be_a_small_regular_file);
    tcase_add_test(tc, auth_file_takes_longest_secret_with_crlf);
    tcase_add_test(tc, auth_file_names_line_of_secret_past_max);
    tcase_add_test(tc, auth_file_missing_is_an_error);
    tcase_add_test(tc, auth_file_without_a_secret_is_an_error);
    tcase_add_test(tc, auth_same_compares_the_sets);
    suite_add_tcase(s, tc);
    return s;
}
