/*
 * codec: JSON in and out of the API, and the only module that includes
 * jansson.h. Decoding turns a request body into an ns_update, answering a
 * 400/422 detail for anything malformed (codec.c one update, codec_batch.c
 * a batch); encoding writes rows, pages, summaries, problems (RFC 9457) and
 * the JSON counters into a buf (codec_out.c, no jansson).
 */
#ifndef NODESTATE_CODEC_H
#define NODESTATE_CODEC_H

#include <stdbool.h>
#include <stddef.h>

#include "engine.h"
#include "buf.h"

/* The decoded document an ns_update borrows its strings from. */
typedef struct codec_doc codec_doc;

/*
 * Decodes an update body for the node (run_id, node_id) into *out. Returns the
 * document (free it with codec_doc_free after the update is used), or NULL
 * with *status set to 400 (not JSON, not an object) or 422 (a member missing,
 * unknown, of the wrong type or out of range) and detail naming the member
 * and the problem (cut to detail_len at a whole character; client text in it
 * made safe by text_safe). last_error longer than max_error_bytes is a 422.
 * resume_state and outputs are stored as the client wrote them, with only the
 * whitespace outside strings removed (numbers and escapes kept byte for byte);
 * attempt must be written as an integer ("2.0" is a 422). A number beyond the
 * range of a double (1e400) anywhere in the body is a 400, as jansson refuses it.
 */
codec_doc *codec_decode_update(const char *body, size_t len,
                               const char *run_id, const char *node_id,
                               size_t max_error_bytes, ns_update *out,
                               int *status, char *detail, size_t detail_len);
void codec_doc_free(codec_doc *d);

/* A decoded batch body (POST /runs/{run_id}/nodes) its updates borrow from. */
typedef struct codec_batch codec_batch;

/*
 * Decodes {"updates": [ {update + "node_id"}, ... ]} (and optionally
 * "run_id", which must equal run_id). The envelope is all or nothing: NULL
 * with *status 400 (not JSON, not an object), 413 (more than max_items
 * updates) or 422 (no "updates" array, an empty one, an unknown member) and
 * detail. Each item is judged alone like codec_decode_update's body, its
 * node_id (required) checked as an id: a bad item does not refuse the
 * batch, codec_batch_item_at tells its 422 detail.
 */
codec_batch *codec_decode_batch(const char *body, size_t len, const char *run_id,
                                size_t max_error_bytes, size_t max_items,
                                int *status, char *detail, size_t detail_len);
/*
 * codec_decode_batch without its fast path for the commonest bodies: every
 * body through jansson's tree. Its answers are codec_decode_batch's; the
 * tests and the fuzzer compare the two.
 */
codec_batch *codec_decode_batch_tree(const char *body, size_t len, const char *run_id,
                                     size_t max_error_bytes, size_t max_items,
                                     int *status, char *detail, size_t detail_len);
/*
 * A body's jansson tree may take at most codec_tree_budget(len) bytes
 * (CODEC_TREE_PER_BYTE times the body, at least CODEC_TREE_FLOOR);
 * codec_tree_estimate is what the tree of body would take, from its text
 * in one pass without allocating. The api refuses a body over the budget
 * before codec_decode_update or codec_decode_batch builds its tree.
 */
#define CODEC_TREE_PER_BYTE 8u
#define CODEC_TREE_FLOOR ((size_t)64 << 20)
size_t codec_tree_budget(size_t len);
size_t codec_tree_estimate(const char *body, size_t len);
size_t codec_batch_len(const codec_batch *b);
/*
 * Item i: its update, or NULL with *detail saying why it is refused (422).
 * *node_id is the item's node_id as sent, NULL when it has no string one.
 */
const ns_update *codec_batch_item_at(const codec_batch *b, size_t i,
                                     const char **node_id, const char **detail);
void codec_batch_free(codec_batch *b);

/* A node state object, every field present, with "durable". */
void codec_row(buf *b, const ns_row *row, bool durable);
/*
 * An RFC 9457 problem: {"type":"urn:nodestate:problem:<slug>","title",
 * "status","detail"} plus "current": the row, when current is not NULL.
 * detail goes through text_safe (at most 1023 bytes, cut at a whole
 * character, control bytes and invalid UTF-8 as \xHH), so request bytes in
 * it can never make the body invalid UTF-8.
 */
void codec_problem(buf *b, int status, const char *slug, const char *title,
                   const char *detail, const ns_row *current, bool durable);
/*
 * {"run_id","nodes":[rows],"next": last node_id or null}, and
 * "deleted_seq" when deleted_seq > 0 (a ?since= list that missed the run's
 * delete); durable per row by durability.
 */
void codec_page(buf *b, const char *run_id, const engine_page *page,
                const engine_durability *durability, int64_t deleted_seq);
/* {"run_id","nodes","counts":{status: n ...},"last_seq","updated_at"}. */
void codec_summary(buf *b, const char *run_id, const engine_summary *s);
/* {"run_id","deleted","seq","durable"}. */
void codec_deleted(buf *b, const char *run_id, size_t deleted, int64_t seq,
                   bool durable);
/* The counters as one JSON object (the names of README: Counters). */
void codec_stats(buf *b, const ns_stats *s, int64_t now_ms);

#endif
