/* check_main.c - the one unit runner, and the helpers its suites share. */
#include "check_suites.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <check.h>

#include "../core/log.h"

char *
test_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    char *dir;

    if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(tmpl, sizeof(tmpl), "%s/grwhd-test-XXXXXX", base);
    dir = mkdtemp(tmpl);
    ck_assert_msg(dir != NULL, "mkdtemp %s: %s", tmpl, strerror(errno));
    return strdup(dir);
}

static void **kept;
static size_t nkept, capkept;

void *
test_keep(void *p)
{
    if (nkept == capkept) {
        capkept = capkept ? capkept * 2 : 16;
        kept = realloc(kept, capkept * sizeof(*kept));
        ck_assert_ptr_nonnull(kept);
    }
    kept[nkept++] = p;
    return p;
}

void
test_release(void)
{
    for (size_t i = 0; i < nkept; i++)
        free(kept[i]);
    free(kept);
    kept = NULL;
    nkept = capkept = 0;
}

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    return flag == FTW_DP ? rmdir(path) : unlink(path);
}

void
test_rmtree(const char *dir)
{
    if (dir != NULL)
        (void)nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

char *
test_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);

    ck_assert_ptr_nonnull(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

void
test_write_file(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");

    ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

char *
test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    size_t n = 0, cap = 0, got;

    if (f == NULL)
        return NULL;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = (n + 4096 + 1) * 2;
            buf = realloc(buf, cap);
            ck_assert_ptr_nonnull(buf);
        }
        got = fread(buf + n, 1, 4096, f);
        if (got == 0)
            break;
        n += got;
    }
    fclose(f);
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

const char *
test_fixture_dir(void)
{
    const char *dir = getenv("TEST_FIXTURES");

    return dir != NULL && dir[0] != '\0' ? dir : "tests/fixtures";
}

char *
test_fixture(const char *name, size_t *len)
{
    char *path = test_path(test_fixture_dir(), name);
    char *text;

    text = test_read_file(path, len);
    ck_assert_msg(text != NULL, "fixture %s: %s (run from the source root "
                  "or set TEST_FIXTURES)", path, strerror(errno));
    free(path);
    return text;
}

int
main(void)
{
    SRunner *sr;
    int failed;

    /* Product code may log; only warnings and errors are worth reading. */
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    sr = srunner_create(auth_suite());
    srunner_add_suite(sr, batch_suite());
    srunner_add_suite(sr, convert_suite());
    srunner_add_suite(sr, runtime_suite());
    srunner_add_suite(sr, spool_suite());
    srunner_add_suite(sr, log_suite());
    srunner_add_suite(sr, config_suite());
    srunner_add_suite(sr, delivery_suite());
    srunner_add_suite(sr, tls_suite());
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
