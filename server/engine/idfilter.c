#include "idfilter.h"

#include <stdint.h>
#include <stdlib.h>

#include "model.h"

/*
 * The first stage holds FIRST_IDS ids, each next one twice as many. BITS
 * bits per id and PROBES probes give about 0.1% false "maybe"s per full
 * stage, so under 2% over the most stages there can be.
 */
#define FIRST_IDS 1024
#define BITS 16
#define PROBES 6
#define SEED2 0x9e3779b97f4a7c15ull

/* One stage; stages chain, newest first. */
struct idfilter {
    idfilter *older;
    size_t ids, capacity, total; /* total: ids in this stage and the older ones */
    size_t mask;                 /* bits - 1, bits a power of two */
    uint64_t words[];
};

/* The id's PROBES bit numbers (before masking): double hashing. */
static void bits_of(const char *id, uint64_t out[PROBES])
{
    uint64_t h1 = model_hash(MODEL_HASH_SEED, id);
    uint64_t h2 = model_hash(SEED2, id) | 1; /* odd: the probes differ */
    for (int i = 0; i < PROBES; i++)
        out[i] = h1 + (uint64_t)i * h2;
}

static bool stage_has(const idfilter *f, const uint64_t b[PROBES])
{
    for (int i = 0; i < PROBES; i++) {
        size_t bit = (size_t)b[i] & f->mask;
        if (!(f->words[bit >> 6] & (1ull << (bit & 63))))
            return false;
    }
    return true;
}

int idfilter_add(idfilter **f, const char *id)
{
    idfilter *g = *f;
    if (g && g->total >= IDFILTER_MAX_IDS)
        return -1;
    if (!g || g->ids == g->capacity) {
        size_t total = g ? g->total : 0;
        size_t capacity = g ? g->capacity * 2 : FIRST_IDS;
        size_t bits = capacity * BITS; /* a power of two: both are */
        idfilter *n = calloc(1, sizeof *n + bits / 64 * sizeof(uint64_t));
        if (!n)
            return -1;
        n->older = g;
        n->capacity = capacity;
        n->total = total;
        n->mask = bits - 1;
        *f = g = n;
    }
    uint64_t b[PROBES];
    bits_of(id, b);
    for (int i = 0; i < PROBES; i++) {
        size_t bit = (size_t)b[i] & g->mask;
        g->words[bit >> 6] |= 1ull << (bit & 63);
    }
    g->ids++;
    g->total++;
    return 0;
}

bool idfilter_may_have(const idfilter *f, const char *id)
{
    uint64_t b[PROBES];
    bits_of(id, b);
    for (; f; f = f->older)
        if (stage_has(f, b))
            return true;
    return false;
}

size_t idfilter_ids(const idfilter *f)
{
    return f ? f->total : 0;
}

size_t idfilter_bytes(const idfilter *f)
{
    size_t n = 0;
    for (; f; f = f->older)
        n += sizeof *f + (f->mask + 1) / 8;
    return n;
}

void idfilter_free(idfilter *f)
{
    while (f) {
        idfilter *older = f->older;
        free(f);
        f = older;
    }
}
