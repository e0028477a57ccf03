/*
 * bounded_wait: clocks, sleeping and the generic bounded poll the harness
 * and the integration tests wait with.
 */
#include "bounded_wait.h"

#include <errno.h>
#include <time.h>

long long ns_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long ns_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void ns_sleep_ms(long ms)
{
    struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

int ns_wait_until(bool (*cond)(void *ctx), void *ctx, double timeout_s,
                  long step_ms)
{
    if (step_ms < 1)
        step_ms = 1;
    long long timeout_ms = (long long)(timeout_s * 1000.0);
    long long deadline = ns_mono_ms() + timeout_ms;
    long rounds = (long)(timeout_ms / step_ms) + 1;
    for (long i = 0; i < rounds; i++) {
        if (cond(ctx))
            return 0;
        if (ns_mono_ms() >= deadline)
            break;
        ns_sleep_ms(step_ms);
    }
    return -1;
}
