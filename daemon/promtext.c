/*
 * promtext.c — the Prometheus text exposition's number format
 * (promtext.h).
 */
#include "promtext.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

void promtext_double(char *out, size_t size, double v)
{
    if (isnan(v)) {
        snprintf(out, size, "NaN");
    } else if (isinf(v)) {
        snprintf(out, size, v > 0 ? "+Inf" : "-Inf");
    } else {
        snprintf(out, size, "%.15g", v);
        if (strtod(out, NULL) != v)
            snprintf(out, size, "%.17g", v);
    }
}
