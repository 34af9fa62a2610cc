/* check_suites.h - the unit suites, and helpers the test files share. */
#ifndef GRWHD_CHECK_SUITES_H
#define GRWHD_CHECK_SUITES_H

#include <stddef.h>

#include <check.h>

Suite *auth_suite(void);
Suite *batch_suite(void);
Suite *convert_suite(void);
Suite *runtime_suite(void);
Suite *spool_suite(void);
Suite *log_suite(void);
Suite *config_suite(void);
Suite *delivery_suite(void);
Suite *tls_suite(void);

/*
 * A fresh directory under $TMPDIR (or /tmp); the caller frees the name
 * and removes the directory with test_rmtree.
 */
char *test_tmpdir(void);
/* Removes dir and everything below it; NULL is ignored. */
void test_rmtree(const char *dir);
/*
 * Frees p when the test's fixture ends (test_release), so a failed
 * assertion leaks nothing even without fork.  Returns p.
 */
void *test_keep(void *p);
void test_release(void);
/* dir "/" name, malloc'd. */
char *test_path(const char *dir, const char *name);
/* Writes len bytes to path, aborting the test when that fails. */
void test_write_file(const char *path, const char *data, size_t len);
/*
 * The whole file, malloc'd with a NUL after the last byte, or NULL when
 * it cannot be read.  *len (when not NULL) gets the size.
 */
char *test_read_file(const char *path, size_t *len);
/* The fixtures folder: tests/fixtures, or $TEST_FIXTURES when set. */
const char *test_fixture_dir(void);
/* A file from the fixtures folder, as test_read_file; missing fails. */
char *test_fixture(const char *name, size_t *len);

#endif
