/*
 * promtext.h — what the Prometheus text exposition asks of every exporter
 * of ours alike: the relay's metrics (metrics.c) and the reconciler's
 * (reconciler/rc_metrics.c) both render with it. httpd.c serves the text
 * and knows nothing of its format.
 */
#ifndef FERRY_PROMTEXT_H
#define FERRY_PROMTEXT_H

#include <stddef.h>

/* A sample value as Prometheus' own clients print floats: the shortest of
 * %.15g and %.17g that reads back as the same double ("0.25", not
 * "0.25000000000000000"); NaN, +Inf and -Inf as the format spells them.
 * Into out (size bytes; 32 hold any double). */
void promtext_double(char *out, size_t size, double v);

#endif
