/*
 * bounded_wait: the clocks and the sleep every wait of the integration tests
 * is built from. A wait here is bounded twice, by a deadline on the monotonic
 * clock and by a round count, so a clock that misbehaves cannot make a test
 * hang; the condition being met ends the wait at once, so a busy machine
 * makes a test slower, never wrong.
 */
#ifndef NODESTATE_BOUNDED_WAIT_H
#define NODESTATE_BOUNDED_WAIT_H

#include <stdbool.h>

/* Wall clock (CLOCK_REALTIME) and monotonic clock in ms. */
long long ns_wall_ms(void);
long long ns_mono_ms(void);
/* Sleeps ms milliseconds, resuming after a signal. */
void ns_sleep_ms(long ms);
/*
 * Calls cond(ctx) every step_ms (at most timeout_s seconds and a bounded
 * number of rounds) until it returns true. 0 when it did, -1 when it did
 * not in time.
 */
int ns_wait_until(bool (*cond)(void *ctx), void *ctx, double timeout_s,
                  long step_ms);

#endif
