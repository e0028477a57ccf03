/*
 * lockcheck: a pthread mutex that knows, in debug builds, which thread holds
 * it, so that a function whose contract is "called with the lock held" can
 * assert it (lockcheck_assert_held) instead of only saying so in a comment.
 * The engine's lock and the HTTP server's mutex both use it. Built with
 * NDEBUG, it is a bare mutex and every check compiles to nothing.
 *
 * Waits on a condition variable go through lockcheck_wait/_timedwait: the
 * mutex is released inside the wait, so the owner is cleared before it and
 * set again after it. lockcheck_cond_init makes the condition variables
 * whose timed waits read the monotonic clock. Header-only (static inline):
 * nothing to link.
 */
#ifndef NODESTATE_LOCKCHECK_H
#define NODESTATE_LOCKCHECK_H

#include <assert.h>
#include <pthread.h>
#include <stdbool.h>
#include <time.h>

#ifndef NDEBUG
#include <stdatomic.h>
#endif

typedef struct lockcheck_mutex {
    pthread_mutex_t mutex;
#ifndef NDEBUG
    /*
     * The holder, or 0 while free (glibc never hands out thread id 0). Set
     * right after locking, cleared right before unlocking; _Atomic because a
     * thread asking whether it holds the lock may not hold it.
     */
    _Atomic(pthread_t) owner;
#endif
} lockcheck_mutex;

static inline int lockcheck_init(lockcheck_mutex *m)
{
#ifndef NDEBUG
    atomic_init(&m->owner, (pthread_t)0);
#endif
    return pthread_mutex_init(&m->mutex, NULL) == 0 ? 0 : -1;
}

static inline void lockcheck_destroy(lockcheck_mutex *m)
{
    pthread_mutex_destroy(&m->mutex);
}

/*
 * A condition variable whose timed waits read CLOCK_MONOTONIC, the clock of
 * every deadline here, so that a step of the wall clock neither fires a
 * wait early nor strands it. 0, or -1 when it could not be made.
 */
static inline int lockcheck_cond_init(pthread_cond_t *cv)
{
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return -1;
    int rc = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (rc == 0)
        rc = pthread_cond_init(cv, &ca);
    pthread_condattr_destroy(&ca);
    return rc == 0 ? 0 : -1;
}

static inline void lockcheck_mark(lockcheck_mutex *m)
{
#ifndef NDEBUG
    atomic_store_explicit(&m->owner, pthread_self(), memory_order_relaxed);
#else
    (void)m;
#endif
}

static inline void lockcheck_unmark(lockcheck_mutex *m)
{
#ifndef NDEBUG
    atomic_store_explicit(&m->owner, (pthread_t)0, memory_order_relaxed);
#else
    (void)m;
#endif
}

static inline void lockcheck_lock(lockcheck_mutex *m)
{
    pthread_mutex_lock(&m->mutex);
    lockcheck_mark(m);
}

static inline void lockcheck_unlock(lockcheck_mutex *m)
{
    lockcheck_unmark(m);
    pthread_mutex_unlock(&m->mutex);
}

static inline int lockcheck_wait(pthread_cond_t *cv, lockcheck_mutex *m)
{
    lockcheck_unmark(m);
    int rc = pthread_cond_wait(cv, &m->mutex);
    lockcheck_mark(m);
    return rc;
}

static inline int lockcheck_timedwait(pthread_cond_t *cv, lockcheck_mutex *m,
                                      const struct timespec *until)
{
    lockcheck_unmark(m);
    int rc = pthread_cond_timedwait(cv, &m->mutex, until);
    lockcheck_mark(m);
    return rc;
}

#ifndef NDEBUG
/* Whether the calling thread holds m (debug builds only). */
static inline bool lockcheck_held(const lockcheck_mutex *m)
{
    pthread_t owner = atomic_load_explicit(&m->owner, memory_order_relaxed);
    return owner != (pthread_t)0 && pthread_equal(owner, pthread_self());
}
#define lockcheck_assert_held(m) assert(lockcheck_held(m))
/* For a function that takes the lock itself, or must not run under it. */
#define lockcheck_assert_not_held(m) assert(!lockcheck_held(m))
#else
#define lockcheck_assert_held(m) ((void)0)
#define lockcheck_assert_not_held(m) ((void)0)
#endif

#endif
