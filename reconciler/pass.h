/*
 * pass.h — the options of check, repair and run, for their --help and
 * tests/test_help.c. Sweeps use reconcile.h only.
 */
#ifndef FERRY_RECONCILE_PASS_H
#define FERRY_RECONCILE_PASS_H

#include "reconcile.h"

/* The options of check, repair and run, as --help shows them: name,
 * argument (NULL: none), the commands it is for, what it does. The list
 * ends with a NULL name. rc_pass_options() is the getopt table parsed. */
typedef struct rc_option_doc {
    const char *name, *arg;
    int commands;
    const char *doc;
} rc_option_doc;
struct option;
const rc_option_doc *rc_option_docs(void);
const struct option *rc_pass_options(void);
/* d is for cmd ("check", "repair", "run"). */
int rc_option_applies(const rc_option_doc *d, const char *cmd);

#endif
