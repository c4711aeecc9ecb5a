/*
 * confref.h — secret references in a setting's value, for both programs'
 * configurations: `${env:NAME}` is the environment variable NAME and
 * `${file:/path}` the contents of a file (one trailing newline dropped),
 * so that a password need not sit in the YAML file, on the command line
 * (where ps shows it) or in a variable of a fixed name.
 *
 *   db: "host=db user=relay password=${file:/run/secrets/pg}"
 *   kafka: { sasl.password: "${env:KAFKA_PASSWORD}" }
 *
 * `$${` stands for a literal `${`. What a reference brings in is taken as
 * it is: it is not searched for references again. Anything else after
 * `${` (an unknown kind, no closing brace, an empty name) is refused
 * rather than passed on, so that a typo never becomes a password.
 *
 * Limits: CONFREF_MAX references in one value, a file of at most
 * CONFREF_FILE_MAX bytes, a result of at most CONFREF_VALUE_MAX bytes.
 */
#ifndef FERRY_CONFREF_H
#define FERRY_CONFREF_H

#include <stddef.h>

enum {
    CONFREF_MAX = 16,
    CONFREF_FILE_MAX = 64 * 1024,
    CONFREF_VALUE_MAX = 256 * 1024,
};

/*
 * The value of in with its references resolved, into *out (the caller
 * frees it). Returns 0; or -1 with *out untouched and what is wrong in
 * why (lower case, without the setting's name, which the caller puts
 * first: "${env:PGPASS}: the variable is not set"). Never copies what a
 * reference resolved to into why.
 */
int confref_expand(const char *in, char **out, char *why, size_t whylen);

/*
 * The same for a libpq connection string, so that what a reference brings
 * into a value stays that value whatever it holds: in the keyword=value
 * form, a reference in a value (password=${file:/p}, password=pre${env:X},
 * in quotes or not) has its spaces, backslashes and quotes escaped by a
 * backslash, and is '' where empty; in a postgresql:// URI it is
 * percent-encoded. A reference where a keyword goes (the whole string) is
 * put in as it is.
 */
int confref_expand_conninfo(const char *in, char **out, char *why, size_t whylen);

#endif
