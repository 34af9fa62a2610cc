/* check_tls.c - certificate pairs: reload, and freeing replaced ones. */
#include "check_suites.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <gnutls/crypto.h>
#include <gnutls/x509.h>

#include "../core/log.h"
#include "../core/util.h"
#include "../core/tls.h"

static char *dir;

/* A fresh self-signed ECDSA pair, written as dir/<name>.crt and .key. */
static void
make_pair(const char *name)
{
    gnutls_x509_privkey_t key;
    gnutls_x509_crt_t crt;
    gnutls_datum_t out;
    unsigned char serial[8];
    char file[64];
    time_t now = time(NULL);

    ck_assert_int_eq(gnutls_x509_privkey_init(&key), 0);
    ck_assert_int_eq(gnutls_x509_privkey_generate(
                         key, GNUTLS_PK_ECDSA,
                         GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0),
                     0);
    ck_assert_int_eq(gnutls_x509_crt_init(&crt), 0);
    ck_assert_int_eq(gnutls_x509_crt_set_version(crt, 3), 0);
    ck_assert_int_eq(gnutls_rnd(GNUTLS_RND_NONCE, serial, sizeof(serial)), 0);
    serial[0] &= 0x7f;
    ck_assert_int_eq(gnutls_x509_crt_set_serial(crt, serial, sizeof(serial)),
                     0);
    ck_assert_int_eq(gnutls_x509_crt_set_activation_time(crt, now - 60), 0);
    ck_assert_int_eq(gnutls_x509_crt_set_expiration_time(crt, now + 3600), 0);
    ck_assert_int_eq(gnutls_x509_crt_set_dn_by_oid(crt,
                                                   GNUTLS_OID_X520_COMMON_NAME,
                                                   0, name, strlen(name)),
                     0);
    ck_assert_int_eq(gnutls_x509_crt_set_key(crt, key), 0);
    ck_assert_int_eq(gnutls_x509_crt_sign2(crt, crt, key, GNUTLS_DIG_SHA256, 0),
                     0);

    ck_assert_int_eq(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &out),
                     0);
    snprintf(file, sizeof(file), "%s.crt", name);
    test_write_file(test_keep(test_path(dir, file)), (char *)out.data,
                    out.size);
    gnutls_free(out.data);
    ck_assert_int_eq(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM,
                                                 &out),
                     0);
    snprintf(file, sizeof(file), "%s.key", name);
    test_write_file(test_keep(test_path(dir, file)), (char *)out.data,
                    out.size);
    gnutls_free(out.data);
    gnutls_x509_crt_deinit(crt);
    gnutls_x509_privkey_deinit(key);
}

static int
load(const char *cert, const char *key)
{
    char c[64], k[64];
    struct gerr err = {{0}};

    snprintf(c, sizeof(c), "%s.crt", cert);
    snprintf(k, sizeof(k), "%s.key", key);
    return tls_load(test_keep(test_path(dir, c)),
                    test_keep(test_path(dir, k)), &err);
}

/* The certificate a handshake on socket fd is given, or NULL. */
static const gnutls_pcert_st *
take(int fd)
{
    gnutls_certificate_retrieve_function2 *cb = tls_callback();
    gnutls_session_t s;
    gnutls_pcert_st *pcert = NULL;
    unsigned npcert = 0;
    gnutls_privkey_t key = NULL;
    int rc;

    ck_assert_int_eq(gnutls_init(&s, GNUTLS_SERVER), 0);
    gnutls_transport_set_int(s, fd);
    rc = cb(s, NULL, 0, NULL, 0, &pcert, &npcert, &key);
    gnutls_deinit(s);
    if (rc != 0)
        return NULL;
    ck_assert_uint_eq(npcert, 1);
    ck_assert_ptr_nonnull(key);
    return pcert;
}

/*
 * The common name in a certificate a handshake was given.  It reads the
 * pair's memory, so the sanitizer build fails on a pair freed too soon.
 */
static const char *
cn_of(const gnutls_pcert_st *pcert, char *cn, size_t cap)
{
    gnutls_x509_crt_t crt;

    ck_assert_ptr_nonnull(pcert);
    ck_assert_int_eq(gnutls_x509_crt_init(&crt), 0);
    ck_assert_int_eq(gnutls_x509_crt_import(crt, &pcert->cert,
                                            GNUTLS_X509_FMT_DER),
                     0);
    ck_assert_int_eq(gnutls_x509_crt_get_dn_by_oid(
                         crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, cn, &cap),
                     0);
    gnutls_x509_crt_deinit(crt);
    return cn;
}

static const char *
handshake(int fd, char *cn, size_t cap)
{
    return cn_of(take(fd), cn, cap);
}

static void
setup(void)
{
    dir = test_tmpdir();
    make_pair("first");
    make_pair("second");
    make_pair("third");
}

static void
teardown(void)
{
    tls_cleanup();
    test_release();
    test_rmtree(dir);
    free(dir);
}

START_TEST(no_pair_no_handshake)
{
    ck_assert_uint_eq(tls_pairs(), 0);
    ck_assert_ptr_null(take(5));
}
END_TEST

START_TEST(bad_pair_keeps_the_old_one)
{
    char cn[64];

    ck_assert_int_eq(load("first", "first"), 0);
    ck_assert_int_eq(load("second", "first"), -1);
    ck_assert_uint_eq(tls_pairs(), 1);
    ck_assert_str_eq(handshake(5, cn, sizeof(cn)), "first");
}
END_TEST

/* Each error names the file at fault and says what was expected. */
START_TEST(load_errors_name_the_file)
{
    struct gerr err = {{0}};
    char *empty = test_keep(test_path(dir, "empty.pem"));
    char *chain = test_keep(test_path(dir, "chain.pem"));
    char *crt = test_keep(test_path(dir, "first.crt"));
    char *key = test_keep(test_path(dir, "first.key"));
    char *other = test_keep(test_path(dir, "second.key"));
    char *one = test_read_file(crt, NULL), *many;
    size_t n = strlen(one);

    test_write_file(empty, "", 0);
    ck_assert_int_eq(tls_load(empty, key, &err), -1);
    ck_assert_msg(strncmp(err.msg, empty, strlen(empty)) == 0 &&
                      strstr(err.msg, "PEM certificate chain") != NULL,
                  "%s", err.msg);
    ck_assert_int_eq(tls_load(crt, empty, &err), -1);
    ck_assert_msg(strncmp(err.msg, empty, strlen(empty)) == 0 &&
                      strstr(err.msg, "PEM key") != NULL,
                  "%s", err.msg);
    ck_assert_int_eq(tls_load(crt, other, &err), -1);
    ck_assert_msg(strncmp(err.msg, other, strlen(other)) == 0 &&
                      strstr(err.msg, "does not belong") != NULL,
                  "%s", err.msg);

    /* 17 certificates: one more than is served. */
    many = test_keep(xmalloc(17 * n + 1));
    for (int i = 0; i < 17; i++)
        memcpy(many + (size_t)i * n, one, n);
    test_write_file(chain, many, 17 * n);
    ck_assert_int_eq(tls_load(chain, key, &err), -1);
    ck_assert_msg(strstr(err.msg, "more than 16 certificates") != NULL,
                  "%s", err.msg);
    test_write_file(chain, many, 16 * n);
    ck_assert_msg(tls_load(chain, key, &err) == 0, "%s", err.msg);
    free(one);
    ck_assert_uint_eq(tls_pairs(), 1);
}
END_TEST

START_TEST(replaced_pair_lives_until_its_connections_close)
{
    const gnutls_pcert_st *on5, *on6;
    char cn[64];

    ck_assert_int_eq(load("first", "first"), 0);
    on5 = take(5);
    on6 = take(6);
    ck_assert_int_eq(load("second", "second"), 0);
    /* Two sockets still hold the first pair. */
    ck_assert_uint_eq(tls_pairs(), 2);
    ck_assert_str_eq(cn_of(on5, cn, sizeof(cn)), "first");
    ck_assert_str_eq(handshake(7, cn, sizeof(cn)), "second");
    tls_release(5);
    ck_assert_uint_eq(tls_pairs(), 2);
    ck_assert_str_eq(cn_of(on6, cn, sizeof(cn)), "first");
    tls_release(6);
    ck_assert_uint_eq(tls_pairs(), 1);
    /* A socket released twice, or never used, changes nothing. */
    tls_release(6);
    tls_release(900);
    tls_release(-1);
    ck_assert_uint_eq(tls_pairs(), 1);
    ck_assert_str_eq(handshake(5, cn, sizeof(cn)), "second");
}
END_TEST

START_TEST(unreleased_pair_is_freed_only_when_let_go)
{
    char cn[64];

    ck_assert_int_eq(load("first", "first"), 0);
    ck_assert_str_eq(handshake(3, cn, sizeof(cn)), "first");
    ck_assert_int_eq(load("second", "second"), 0);
    /* A descriptor reused by a new connection takes the new pair. */
    ck_assert_str_eq(handshake(3, cn, sizeof(cn)), "second");
    ck_assert_uint_eq(tls_pairs(), 1);
    ck_assert_int_eq(load("third", "third"), 0);
    ck_assert_uint_eq(tls_pairs(), 2);
    tls_release(3);
    ck_assert_uint_eq(tls_pairs(), 1);
}
END_TEST

START_TEST(many_renewals_keep_one_pair)
{
    static const char *const names[] = {"first", "second", "third"};
    char cn[64];

    for (int i = 0; i < 300; i++) {
        const char *n = names[i % 3];

        ck_assert_int_eq(load(n, n), 0);
        ck_assert_str_eq(handshake(10 + i % 50, cn, sizeof(cn)), n);
        tls_release(10 + i % 50);
        test_release();
    }
    ck_assert_uint_eq(tls_pairs(), 1);
}
END_TEST

START_TEST(sessions_not_on_their_socket_keep_every_pair)
{
    gnutls_session_t s;
    char cn[64];

    ck_assert_int_eq(load("first", "first"), 0);
    ck_assert_int_eq(gnutls_init(&s, GNUTLS_SERVER), 0);
    gnutls_transport_set_int(s, 8);
    tls_check_transport(s, 8);
    ck_assert_str_eq(handshake(8, cn, sizeof(cn)), "first");
    ck_assert_int_eq(load("second", "second"), 0);
    tls_release(8);
    ck_assert_uint_eq(tls_pairs(), 1);

    /* A transport other than the socket: nothing can be given back.  The
     * warning it logs is expected here. */
    log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
    tls_check_transport(s, 9);
    tls_check_transport(NULL, 9);
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    gnutls_deinit(s);
    ck_assert_str_eq(handshake(9, cn, sizeof(cn)), "second");
    ck_assert_int_eq(load("third", "third"), 0);
    tls_release(9);
    ck_assert_uint_eq(tls_pairs(), 2);
}
END_TEST

Suite *
tls_suite(void)
{
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("pairs");

    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, no_pair_no_handshake);
    tcase_add_test(tc, bad_pair_keeps_the_old_one);
    tcase_add_test(tc, load_errors_name_the_file);
    tcase_add_test(tc, replaced_pair_lives_until_its_connections_close);
    tcase_add_test(tc, unreleased_pair_is_freed_only_when_let_go);
    tcase_add_test(tc, many_renewals_keep_one_pair);
    tcase_add_test(tc, sessions_not_on_their_socket_keep_every_pair);
    suite_add_tcase(s, tc);
    return s;
}
