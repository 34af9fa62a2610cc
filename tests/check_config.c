/* check_config.c - options from argv and GRWHD_* variables. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <check.h>

#include "../core/config.h"

extern char **environ;

static struct config c;
static struct gerr err;

/* Drops every GRWHD_* variable, so the caller's shell cannot leak in. */
static void
clear_env(void)
{
    char name[256];

    for (;;) {
        char **e;

        for (e = environ; *e != NULL; e++)
            if (strncmp(*e, "GRWHD_", 6) == 0)
                break;
        if (*e == NULL)
            return;
        snprintf(name, sizeof(name), "%.*s", (int)strcspn(*e, "="), *e);
        ck_assert_int_eq(unsetenv(name), 0);
    }
}

static void
setup(void)
{
    clear_env();
    config_defaults(&c);
    memset(&err, 0, sizeof(err));
}

static void
teardown(void)
{
    config_free(&c);
    clear_env();
    test_release();
}

/*
 * Parses the NULL-terminated argument list (without a program name) into
 * a fresh config; the environment is read each time.
 */
static int
parse_argv(char **argv)
{
    int argc = 0;

    while (argv[argc] != NULL)
        argc++;
    config_free(&c);
    config_defaults(&c);
    memset(&err, 0, sizeof(err));
    return config_parse(&c, argc, argv, &err);
}

#define PARSE(...) parse_argv((char *[]){__VA_ARGS__, NULL})
#define PARSE_NONE() parse_argv((char *[]){NULL})
#define PARSE_OK(...)                                                     \
    ck_assert_msg(PARSE(__VA_ARGS__) == 0, "config_parse: %s", err.msg)

#define ASSERT_HAS(hay, needle)                                          \
    ck_assert_msg(strstr((hay), (needle)) != NULL, "'%s' lacks '%s'",     \
                  (hay), (needle))

START_TEST(config_defaults_are_as_documented)
{
    ck_assert_msg(PARSE_NONE() == 0, "%s", err.msg);
    ck_assert_ptr_null(c.script);
    ck_assert_str_eq(c.listen, "127.0.0.1:8080");
    ck_assert_ptr_null(c.tls_cert);
    ck_assert_ptr_null(c.tls_key);
    ck_assert_ptr_null(c.path);
    ck_assert_str_eq(c.secret_param, "secret");
    ck_assert_int_eq(c.nsecrets, 0);
    ck_assert_str_eq(c.spool, "grwhd-spool.db");
    ck_assert_int_ge(c.workers, 1);
    ck_assert_int_eq(c.max_body, 4L << 20);
    ck_assert_int_eq(c.max_attempts, 8);
    ck_assert_double_eq(c.handler_timeout, 30);
    ck_assert_int_eq(c.lua_memory, 256L << 20);
    ck_assert_int_eq(c.max_backlog, 1000000);
    ck_assert_int_eq(c.max_conns, 1024);
    ck_assert_int_eq(c.max_conns_per_ip, 256);
    ck_assert_int_eq(c.conn_timeout, 15);
    ck_assert_int_eq(c.log_level, LOG_INFO);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_TEXT);
    ck_assert(!c.help);
    ck_assert(!c.version);
    ck_assert_int_eq(c.nargs, 0);
}
END_TEST

START_TEST(config_max_body_takes_size_suffixes)
{
    PARSE_OK("--max-body", "1M");
    ck_assert_int_eq(c.max_body, 1048576);
    PARSE_OK("--max-body=2K");
    ck_assert_int_eq(c.max_body, 2048);
    PARSE_OK("--max-body=1g");
    ck_assert_int_eq(c.max_body, 1L << 30);
    PARSE_OK("--max-body", "64");
    ck_assert_int_eq(c.max_body, 64);
}
END_TEST

START_TEST(config_rejects_bad_number)
{
    static const char *const bad[] = {"12Q", "abc", "", "1KB", "1.5M",
                                      "0x10", "1 M", "99999999999999999999"};

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char want[128];

        ck_assert_msg(PARSE("--max-body", (char *)bad[i]) == -1,
                      "'%s' accepted as %ld", bad[i], c.max_body);
        snprintf(want, sizeof(want), "--max-body: bad value '%s'", bad[i]);
        ck_assert_str_eq(err.msg, want);
    }
    ck_assert_int_eq(PARSE("--workers=two"), -1);
    ck_assert_str_eq(err.msg, "--workers: bad value 'two'");
}
END_TEST

START_TEST(config_rejects_out_of_range_values)
{
    ck_assert_int_eq(PARSE("--workers", "0"), -1);
    ck_assert_str_eq(err.msg, "--workers: bad value '0'");
    ck_assert_int_eq(PARSE("--workers", "257"), -1);
    ck_assert_int_eq(PARSE("--workers", "-1"), -1);
    PARSE_OK("--workers", "256");
    ck_assert_int_eq(c.workers, 256);
    PARSE_OK("--workers", "1");
    ck_assert_int_eq(c.workers, 1);
    ck_assert_int_eq(PARSE("--max-body", "63"), -1);
    ck_assert_int_eq(PARSE("--max-body", "2G"), -1);
    ck_assert_int_eq(PARSE("--handler-timeout", "-0.5"), -1);
    ck_assert_int_eq(PARSE("--handler-timeout", "inf"), -1);
}
END_TEST

/* Not a number at all: a budget of NaN would never run out. */
START_TEST(config_rejects_nan_timeout)
{
    ck_assert_msg(PARSE("--handler-timeout", "nan") == -1,
                  "nan accepted as %f", c.handler_timeout);
    ck_assert_str_eq(err.msg, "--handler-timeout: bad value 'nan'");
}
END_TEST

/* A suffix must not wrap a negative number round into the range. */
START_TEST(config_rejects_size_that_overflows)
{
    ck_assert_msg(PARSE("--max-body", "-18014398509481983K") == -1,
                  "accepted as %ld", c.max_body);
    ck_assert_msg(PARSE("--max-body", "9007199254740993K") == -1,
                  "accepted as %ld", c.max_body);
}
END_TEST

START_TEST(config_handler_timeout_takes_fractions)
{
    PARSE_OK("--handler-timeout=0.25");
    ck_assert_double_eq(c.handler_timeout, 0.25);
    PARSE_OK("--handler-timeout", "0");
    ck_assert_double_eq(c.handler_timeout, 0);
}
END_TEST

START_TEST(config_rejects_unknown_option_by_name)
{
    ck_assert_int_eq(PARSE("--workers", "2", "--frobnicate=3"), -1);
    ck_assert_str_eq(err.msg, "unknown option '--frobnicate' (see --help)");
    ck_assert_int_eq(PARSE("--max_body", "1M"), -1);
    ck_assert_str_eq(err.msg, "unknown option '--max_body' (see --help)");
}
END_TEST

START_TEST(config_option_needs_its_value)
{
    ck_assert_int_eq(PARSE("--script"), -1);
    ck_assert_str_eq(err.msg, "--script needs a value");
    ck_assert_int_eq(PARSE("--script="), -1);
    ck_assert_str_eq(err.msg, "--script: bad value ''");
    ck_assert_int_eq(PARSE("--help=yes"), -1);
    ck_assert_str_eq(err.msg, "--help takes no value");
    PARSE_OK("--help", "--version");
    ck_assert(c.help);
    ck_assert(c.version);
}
END_TEST

START_TEST(config_collects_arguments_that_are_not_options)
{
    PARSE_OK("a.json", "--workers", "2", "b.json", "--", "-x");
    ck_assert_int_eq(c.workers, 2);
    ck_assert_int_eq(c.nargs, 4);
    ck_assert_str_eq(c.args[0], "a.json");
    ck_assert_str_eq(c.args[1], "b.json");
    ck_assert_str_eq(c.args[2], "--");
    ck_assert_str_eq(c.args[3], "-x");
}
END_TEST

START_TEST(config_secret_is_repeatable)
{
    PARSE_OK("--secret", "alpha", "--secret=beta", "--secret", "gamma");
    ck_assert_int_eq(c.nsecrets, 3);
    ck_assert_str_eq(c.secrets[0], "alpha");
    ck_assert_str_eq(c.secrets[1], "beta");
    ck_assert_str_eq(c.secrets[2], "gamma");
}
END_TEST

START_TEST(config_env_is_read_and_argv_wins)
{
    ck_assert_int_eq(setenv("GRWHD_MAX_BODY", "2M", 1), 0);
    ck_assert_int_eq(setenv("GRWHD_LOG_FORMAT", "json", 1), 0);
    ck_assert_int_eq(setenv("GRWHD_SCRIPT", "", 1), 0);
    ck_assert_msg(PARSE_NONE() == 0, "%s", err.msg);
    ck_assert_int_eq(c.max_body, 2L << 20);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_JSON);
    ck_assert_ptr_null(c.script);
    PARSE_OK("--max-body", "1K");
    ck_assert_int_eq(c.max_body, 1024);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_JSON);
}
END_TEST

START_TEST(config_env_bad_value_names_variable)
{
    ck_assert_int_eq(setenv("GRWHD_WORKERS", "lots", 1), 0);
    ck_assert_int_eq(PARSE_NONE(), -1);
    ck_assert_str_eq(err.msg, "GRWHD_WORKERS: bad value 'lots'");
}
END_TEST

START_TEST(config_argv_secrets_replace_env_secret)
{
    ck_assert_int_eq(setenv("GRWHD_SECRET", "from-env", 1), 0);
    ck_assert_msg(PARSE_NONE() == 0, "%s", err.msg);
    ck_assert_int_eq(c.nsecrets, 1);
    ck_assert_str_eq(c.secrets[0], "from-env");
    PARSE_OK("--secret", "cli-1", "--secret", "cli-2");
    ck_assert_int_eq(c.nsecrets, 2);
    ck_assert_str_eq(c.secrets[0], "cli-1");
    ck_assert_str_eq(c.secrets[1], "cli-2");
}
END_TEST

START_TEST(config_tls_cert_and_key_go_together)
{
    ck_assert_int_eq(PARSE("--tls-cert", "c.pem"), -1);
    ck_assert_str_eq(err.msg, "--tls-cert and --tls-key go together");
    ck_assert_int_eq(PARSE("--tls-key", "k.pem"), -1);
    ck_assert_str_eq(err.msg, "--tls-cert and --tls-key go together");
    PARSE_OK("--tls-cert", "c.pem", "--tls-key=k.pem");
    ck_assert_str_eq(c.tls_cert, "c.pem");
    ck_assert_str_eq(c.tls_key, "k.pem");
}
END_TEST

/* A typo in an address or path is a usage error, found before start. */
START_TEST(config_rejects_bad_address_and_path)
{
    ck_assert_int_eq(PARSE("--listen", "127.0.0.1:99999"), -1);
    ck_assert_str_eq(err.msg, "--listen: bad address '127.0.0.1:99999' "
                              "(want ADDR:PORT or [ADDR]:PORT)");
    ck_assert_int_eq(PARSE("--admin", "nonsense"), -1);
    ck_assert_str_eq(err.msg, "--admin: bad address 'nonsense' "
                              "(want ADDR:PORT or [ADDR]:PORT)");
    ck_assert_int_eq(PARSE("--path", "hook"), -1);
    ck_assert_str_eq(err.msg, "--path: 'hook' must start with '/'");
    PARSE_OK("--listen", "[::1]:8443", "--admin", "127.0.0.1:9090",
             "--path", "/hook");
}
END_TEST

START_TEST(config_log_options_parse)
{
    PARSE_OK("--log-level", "debug", "--log-format=json");
    ck_assert_int_eq(c.log_level, LOG_DEBUG);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_JSON);
    ck_assert_int_eq(PARSE("--log-format", "xml"), -1);
    ck_assert_str_eq(err.msg, "--log-format: bad value 'xml'");
    ck_assert_int_eq(PARSE("--log-level", "loud"), -1);
}
END_TEST

/* No error a secret can cause may print the secret. */
START_TEST(config_errors_never_show_a_secret)
{
    char *argv[2 * GRWHD_CONFIG_SECRETS_MAX + 3];
    char vals[GRWHD_CONFIG_SECRETS_MAX + 1][32];
    int n = 0;

    ck_assert_int_eq(PARSE("--secret="), -1);
    ck_assert_str_eq(err.msg, "--secret: bad value '(hidden)'");

    for (int i = 0; i <= GRWHD_CONFIG_SECRETS_MAX; i++) {
        snprintf(vals[i], sizeof(vals[i]), "Hunter2-%02d", i);
        argv[n++] = "--secret";
        argv[n++] = vals[i];
    }
    argv[n] = NULL;
    ck_assert_int_eq(parse_argv(argv), -1);
    ck_assert_str_eq(err.msg, "--secret: more than 16 secrets");
    ck_assert_ptr_null(strstr(err.msg, "Hunter2"));

    ck_assert_int_eq(PARSE("--secrets=Hunter2-xx"), -1);
    ck_assert_ptr_null(strstr(err.msg, "Hunter2"));
    ck_assert_int_eq(PARSE("--secert", "Hunter2-yy"), -1);
    ck_assert_ptr_null(strstr(err.msg, "Hunter2"));
}
END_TEST

Suite *
config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("config");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, config_defaults_are_as_documented);
    tcase_add_test(tc, config_max_body_takes_size_suffixes);
    tcase_add_test(tc, config_rejects_bad_number);
    tcase_add_test(tc, config_rejects_out_of_range_values);
    tcase_add_test(tc, config_rejects_nan_timeout);
    tcase_add_test(tc, config_rejects_size_that_overflows);
    tcase_add_test(tc, config_handler_timeout_takes_fractions);
    tcase_add_test(tc, config_rejects_unknown_option_by_name);
    tcase_add_test(tc, config_option_needs_its_value);
    tcase_add_test(tc, config_collects_arguments_that_are_not_options);
    tcase_add_test(tc, config_secret_is_repeatable);
    tcase_add_test(tc, config_env_is_read_and_argv_wins);
    tcase_add_test(tc, config_env_bad_value_names_variable);
    tcase_add_test(tc, config_argv_secrets_replace_env_secret);
    tcase_add_test(tc, config_tls_cert_and_key_go_together);
    tcase_add_test(tc, config_rejects_bad_address_and_path);
    tcase_add_test(tc, config_log_options_parse);
    tcase_add_test(tc, config_errors_never_show_a_secret);
    suite_add_tcase(s, tc);
    return s;
}
