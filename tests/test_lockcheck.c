/*
 * Unit tests for lockcheck: the mutex locks and waits like a plain one in
 * every build; in debug builds (no NDEBUG: the sanitizer build) it knows its
 * holder, across condition waits too, and lockcheck_assert_held aborts in a
 * thread that does not hold it. Threads meet through the mutex and a
 * condition variable, never through sleeps. lockcheck_cond_init's timed
 * waits read the monotonic clock.
 */
#include <criterion/criterion.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <time.h>

#include "lockcheck.h"

typedef struct meeting {
    lockcheck_mutex mu;
    pthread_cond_t cv;
    bool waiting;   /* guarded by mu: the main thread is inside lockcheck_timedwait */
    bool seen;      /* guarded by mu: the helper has looked */
    bool helper_held; /* what lockcheck_held said in the helper, with mu locked */
} meeting;

static struct timespec in_seconds(int s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += s;
    return ts;
}

/* Locks mu while the main thread waits on cv, records what it sees, wakes it. */
static void *helper(void *arg)
{
    meeting *m = arg;
    lockcheck_lock(&m->mu);
    while (!m->waiting)
        lockcheck_wait(&m->cv, &m->mu);
#ifndef NDEBUG
    m->helper_held = lockcheck_held(&m->mu);
#else
    m->helper_held = true;
#endif
    m->seen = true;
    pthread_cond_broadcast(&m->cv);
    lockcheck_unlock(&m->mu);
    return NULL;
}

Test(lockcheck, waits_hand_the_mutex_over_and_back)
{
    meeting m = { .waiting = false };
    cr_assert_eq(lockcheck_init(&m.mu), 0);
    cr_assert_eq(pthread_cond_init(&m.cv, NULL), 0);
    pthread_t t;
    cr_assert_eq(pthread_create(&t, NULL, helper, &m), 0);

    lockcheck_lock(&m.mu);
    m.waiting = true;
    pthread_cond_broadcast(&m.cv);
    struct timespec until = in_seconds(30); /* a hang becomes a failure */
    while (!m.seen)
        if (lockcheck_timedwait(&m.cv, &m.mu, &until) != 0)
            break;
    cr_assert(m.seen, "the helper never got the mutex during the wait");
    cr_assert(m.helper_held, "the helper did not hold the mutex it locked");
#ifndef NDEBUG
    cr_assert(lockcheck_held(&m.mu), "back from the wait, the holder was not recorded");
#endif
    lockcheck_unlock(&m.mu);
    pthread_join(t, NULL);
    pthread_cond_destroy(&m.cv);
    lockcheck_destroy(&m.mu);
}

#ifndef NDEBUG

static void *probe(void *arg)
{
    return lockcheck_held(arg) ? arg : NULL;
}

Test(lockcheck, knows_its_holder)
{
    lockcheck_mutex mu;
    cr_assert_eq(lockcheck_init(&mu), 0);
    cr_assert_not(lockcheck_held(&mu));
    lockcheck_lock(&mu);
    cr_assert(lockcheck_held(&mu));
    pthread_t t;
    void *other = &mu;
    cr_assert_eq(pthread_create(&t, NULL, probe, &mu), 0);
    pthread_join(t, &other);
    cr_assert_null(other, "another thread took itself for the holder");
    lockcheck_unlock(&mu);
    cr_assert_not(lockcheck_held(&mu));
    lockcheck_destroy(&mu);
}

Test(lockcheck, assert_held_aborts_without_the_lock, .signal = SIGABRT)
{
    lockcheck_mutex mu;
    cr_assert_eq(lockcheck_init(&mu), 0);
    lockcheck_assert_held(&mu);
}

Test(lockcheck, assert_not_held_aborts_under_the_lock, .signal = SIGABRT)
{
    lockcheck_mutex mu;
    cr_assert_eq(lockcheck_init(&mu), 0);
    lockcheck_lock(&mu);
    lockcheck_assert_not_held(&mu);
}

#endif

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * lockcheck_cond_init's waits read the monotonic clock: a deadline 100 ms
 * ahead on it is waited out. Read on the wall clock, the same numbers are a
 * moment decades ago (the monotonic clock counts from boot), and the wait
 * would end at once. Load only makes the wait longer, never shorter.
 */
Test(lockcheck, cond_init_waits_on_the_monotonic_clock)
{
    lockcheck_mutex mu;
    pthread_cond_t cv;
    cr_assert(lockcheck_init(&mu) == 0);
    cr_assert(lockcheck_cond_init(&cv) == 0);
    long long start = mono_ms();
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_nsec += 100 * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    lockcheck_lock(&mu);
    int rc = 0;
    while (rc != ETIMEDOUT)
        rc = lockcheck_timedwait(&cv, &mu, &until);
    lockcheck_unlock(&mu);
    cr_assert(mono_ms() - start >= 90, "the wait ended after %lld ms", mono_ms() - start);
    pthread_cond_destroy(&cv);
    lockcheck_destroy(&mu);
}
