/* config.h - options from the command line and GRWHD_* variables. */
#ifndef GRWHD_CONFIG_H
#define GRWHD_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "log.h"
#include "util.h"

#define GRWHD_CONFIG_SECRETS_MAX 16

struct config {
    const char *script;
    const char *listen;
    const char *tls_cert;
    const char *tls_key;
    const char *path;
    const char *secret_param;
    const char *secret_file;
    const char *secrets[GRWHD_CONFIG_SECRETS_MAX];
    int nsecrets;
    const char *spool;
    long workers;
    long max_body;
    long max_attempts;
    double dedupe_window;
    double keep_done;
    double handler_timeout;
    long lua_memory;
    long max_backlog;
    long max_conns;
    long max_conns_per_ip;
    long conn_timeout;
    const char *admin;
    const char *config;
    const char *user;
    enum log_level log_level;
    enum log_format log_format;
    bool help;
    bool version;
    /* Flags of the spool command. */
    bool json;
    bool all;
    bool yes;
    bool strict;
    /* Arguments that are not options (payload files for feed). */
    const char **args;
    int nargs;
    /* Values read from --config, which the fields above may point into. */
    char **owned;
    int nowned;
};

void config_defaults(struct config *c);
/*
 * Reads the --config file (or GRWHD_CONFIG), then GRWHD_<NAME> variables,
 * then argv; a later source wins.  Returns -1 with a one-line message for
 * a bad option or value.
 */
int config_parse(struct config *c, int argc, char **argv, struct gerr *err);
void config_free(struct config *c);
/* The options, one per line, for --help. */
void config_usage(FILE *out);

#endif
