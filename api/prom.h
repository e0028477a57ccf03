/*
 * prom: the counters in the Prometheus text exposition format 0.0.4, as
 * nodestate_* metrics named by Prometheus conventions (_total counters, base
 * units, histograms), each with HELP and TYPE, plus the standard process_*
 * metrics and nodestate_build_info.
 */
#ifndef NODESTATE_PROM_H
#define NODESTATE_PROM_H

#include <stdint.h>

#include "stats.h"
#include "buf.h"

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* What the process_* metrics report; -1 where it could not be read. */
typedef struct prom_process {
    int64_t resident_bytes;  /* resident set size */
    int64_t open_fds;        /* open file descriptors */
} prom_process;

/*
 * Fills *out from a procfs process directory ("/proc/self"): resident pages
 * from <dir>/statm times the page size, and the entries of <dir>/fd (the
 * descriptor used to list that directory not counted). Either field is -1
 * when its file cannot be read or parsed; never fails otherwise.
 */
void prom_process_read(const char *dir, prom_process *out);

/* Renders s and the current process (read from /proc/self). */
void prom_render(buf *b, const ns_stats *s, int64_t now_ms);

/* Renders s and *proc; a process_* family whose field is -1 is left out. */
void prom_render_with(buf *b, const ns_stats *s, int64_t now_ms,
                      const prom_process *proc);

#endif
