/* clock: the monotonic clock, and sleeps that signals do not cut short,
 * for the harness, the tests and the benchmarks. */
#ifndef FERRY_TESTS_HARNESS_CLOCK_H
#define FERRY_TESTS_HARNESS_CLOCK_H

#include <stdint.h>

/* Microseconds and milliseconds on the monotonic clock. */
int64_t clk_mono_us(void);
int64_t clk_mono_ms(void);
/* Sleep ms milliseconds, through signals. */
void clk_sleep_ms(long ms);

#endif
