/*
 * prom: the counters in the Prometheus text exposition format 0.0.4, as
 * nodestate_* metrics named by Prometheus conventions (_total counters, base
 * units, histograms), each with HELP and TYPE.
 */
#ifndef NODESTATE_PROM_H
#define NODESTATE_PROM_H

#include <stdint.h>

#include "../server/engine/stats.h"
#include "buf.h"

#define PROM_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

void prom_render(buf *b, const ns_stats *s, int64_t now_ms);

#endif
