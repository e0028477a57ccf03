/*
 * env_clear: the NODESTATE_* variables a test inherits. The server reads its
 * configuration from them, so a developer's shell or CI could change what a
 * test sees; suites clear them first (Criterion runs each test in a process
 * of its own, so this touches only that test).
 */
#ifndef NODESTATE_ENV_CLEAR_H
#define NODESTATE_ENV_CLEAR_H

/*
 * Unsets every NODESTATE_* variable of our environment but NODESTATE_TEST_PG
 * (the harness's own: pg_check.h). 0 or -1.
 */
int ns_env_clear(void);

#endif
