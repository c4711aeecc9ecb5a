/*
 * promtext.h — what the Prometheus text exposition asks of every exporter
 * of ours alike: the relay's metrics (metrics.c) and the reconciler's
 * (reconciler/rc_metrics.c) both render with it. httpd.c serves the text
 * and knows nothing of its format.
 */
#ifndef FERRY_PROMTEXT_H
#define FERRY_PROMTEXT_H

#include <stddef.h>

#include "strbuf.h"

/* A sample value as Prometheus' own clients print floats: the shortest of
 * %.15g and %.17g that reads back as the same double ("0.25", not
 * "0.25000000000000000"); NaN, +Inf and -Inf as the format spells them.
 * Into out (size bytes; 32 hold any double). */
void promtext_double(char *out, size_t size, double v);

/*
 * The process_* families Prometheus' own clients export, read from
 * /proc/self and getrusage: process_cpu_seconds_total,
 * process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_start_time_seconds, process_open_fds, process_max_fds, each
 * with its HELP and TYPE. A value that cannot be read is left out (its
 * HELP and TYPE stay). Into out (size bytes; 2048 hold them); the length
 * written, as snprintf's. Safe on any thread.
 */
int promtext_process(char *out, size_t size);

/* A label value, between the quotes, as the format wants it: backslash,
 * double quote and newline escaped; other bytes below 0x20 dropped (a
 * broker name or a version comes from outside and must not break a
 * line). The one escaping of every exporter of ours. */
void promtext_label_value(strbuf *b, const char *v);

#endif
