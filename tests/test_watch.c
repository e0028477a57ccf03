/*
 * Unit tests for watch: the hub that files each accepted change with the
 * watchers of its run, driven directly (no HTTP): catch-up in seq order then
 * "synced", a node's newer state replacing its older one, durable streams
 * holding back what is not committed, the buffer bound, the delete, the
 * watcher limit, and parked watchers resumed by the hub's thread.
 */
#include <criterion/criterion.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "model.h"
#include "stats.h"
#include "watch.h"

static _Atomic int resumed;

static void fake_resume(void *owner)
{
    (void)owner;
    atomic_fetch_add(&resumed, 1);
}

/* {"node":"<id>","seq":N,"durable":b}: enough to tell events apart. */
static char *fake_encode(void *ctx, const ns_row *row, bool durable, size_t *len)
{
    (void)ctx;
    char *s = malloc(160);
    if (!s)
        return NULL;
    *len = (size_t)snprintf(s, 160, "{\"node\":\"%s\",\"seq\":%lld,\"durable\":%s}",
                            row->node_id, (long long)row->seq, durable ? "true" : "false");
    return s;
}

static ns_stats stats;

static watch_hub *hub(size_t max, size_t buffer)
{
    memset(&stats, 0, sizeof stats);
    atomic_store(&resumed, 0);
    watch_config cfg = {
        .max_watchers = max, .buffer_bytes = buffer, .heartbeat = 0,
        .resume = fake_resume, .encode = fake_encode, .stats = &stats,
    };
    watch_hub *h = watch_hub_new(&cfg);
    cr_assert_not_null(h);
    return h;
}

static ns_row *row(const char *run, const char *node, int64_t seq)
{
    ns_row d = { 0 };
    d.run_id = run;
    d.node_id = node;
    d.status = NS_RUNNING;
    d.attempt = 1;
    for (int i = 0; i < NS_TS_COUNT; i++)
        d.ts[i] = NS_TS_NULL;
    d.seq = seq;
    ns_row *r = model_row_copy(&d);
    cr_assert_not_null(r);
    return r;
}

/* A change as the engine reports it. */
static void change(watch_hub *h, const char *run, const char *node, int64_t seq)
{
    ns_row *r = row(run, node, seq);
    atomic_store(&stats.last_seq, seq);
    watch_on_change(h, run, r, seq);
    model_row_unref(r);
}

/* Everything the stream has to say now (until IDLE or its end); *end gets the last answer. */
static char *drain(watcher *w, ssize_t *end)
{
    static char text[1 << 16];
    size_t n = 0;
    ssize_t got;
    char buf[37]; /* small: events span calls */
    while ((got = watch_fill(w, buf, sizeof buf)) > 0) {
        cr_assert_lt(n + (size_t)got, sizeof text);
        memcpy(text + n, buf, (size_t)got);
        n += (size_t)got;
    }
    text[n] = '\0';
    *end = got;
    return text;
}

/* The ids of the node events in text, in order, as "1,2,3". */
static void ids(const char *text, char *out, size_t size)
{
    out[0] = '\0';
    for (const char *p = strstr(text, "id: "); p; p = strstr(p + 1, "id: ")) {
        char one[32];
        snprintf(one, sizeof one, "%s%lld", out[0] ? "," : "", atoll(p + 4));
        strncat(out, one, size - strlen(out) - 1);
    }
}

Test(watch, catch_up_in_seq_order_then_synced_then_live_changes_coalesced)
{
    watch_hub *h = hub(8, 1 << 20);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 1, false, NULL, 0, &err);
    cr_assert_not_null(w);
    /* Changed after watch_open: newer than the listing's copy of b. */
    change(h, "r", "b", 9);
    change(h, "other", "x", 10);
    ns_row *rows[] = { row("r", "c", 4), row("r", "a", 1), row("r", "b", 3), row("r", "d", 2) };
    cr_assert_eq(watch_catch_up(w, rows, 4), 0);
    for (int i = 0; i < 4; i++)
        model_row_unref(rows[i]);
    ssize_t end;
    char *t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    char got[128];
    ids(t, got, sizeof got);
    /* a (1) is not above since; b's listed state (3) gave way to its change (9). */
    cr_assert_str_eq(got, "2,4,9", "%s", t);
    cr_assert(strstr(t, "retry: 1000\n\n") == t, "%s", t);
    char *synced = strstr(t, "event: synced");
    cr_assert_not_null(synced);
    cr_assert(synced > strstr(t, "id: 4") && synced < strstr(t, "id: 9"), "%s", t);
    cr_assert_not_null(strstr(t, "data: {\"node\":\"c\",\"seq\":4,\"durable\":false}\n\n"));
    /* Three states of one node while the client reads nothing: only the last is sent. */
    change(h, "r", "e", 11);
    change(h, "r", "e", 12);
    change(h, "r", "f", 13);
    change(h, "r", "e", 14);
    t = drain(w, &end);
    ids(t, got, sizeof got);
    cr_assert_str_eq(got, "13,14", "%s", t);
    cr_assert_eq(atomic_load(&stats.watch_events_sent), 5);
    cr_assert_eq(atomic_load(&stats.watchers), 1);
    watch_close(w);
    cr_assert_eq(atomic_load(&stats.watchers), 0);
    watch_hub_free(h);
}

Test(watch, durable_stream_holds_back_what_is_not_committed)
{
    watch_hub *h = hub(8, 1 << 20);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, true, NULL, 0, &err);
    cr_assert_not_null(w);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    ssize_t end;
    char got[128];
    drain(w, &end);
    change(h, "r", "a", 5);
    change(h, "r", "b", 6);
    char *t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    cr_assert_eq(strstr(t, "id: "), NULL, "sent before its commit: %s", t);
    watch_on_durable(h, 5);
    t = drain(w, &end);
    ids(t, got, sizeof got);
    cr_assert_str_eq(got, "5");
    cr_assert_not_null(strstr(t, "\"durable\":true"));
    watch_on_durable(h, 6);
    t = drain(w, &end);
    ids(t, got, sizeof got);
    cr_assert_str_eq(got, "6");
    watch_close(w);
    watch_hub_free(h);
}

Test(watch, a_stream_past_its_buffer_is_dropped)
{
    watch_hub *h = hub(8, 2000);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    cr_assert_not_null(w);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    ssize_t end;
    drain(w, &end);    /* synced: from now on the bound holds */
    char node[16];
    for (int i = 0; i < 100 && atomic_load(&stats.watch_dropped) == 0; i++) {
        snprintf(node, sizeof node, "n%d", i);
        change(h, "r", node, i + 1);
    }
    cr_assert_eq(atomic_load(&stats.watch_dropped), 1);
    char buf[64];
    cr_assert_eq(watch_fill(w, buf, sizeof buf), WATCH_FILL_DROP);
    watch_close(w);
    watch_hub_free(h);
}

Test(watch, delete_ends_the_stream_and_the_limit_holds)
{
    watch_hub *h = hub(1, 1 << 20);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    cr_assert_not_null(w);
    cr_assert_null(watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err));
    cr_assert_eq(err, WATCH_TOO_MANY);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    change(h, "r", "a", 1);
    watch_on_change(h, "r", NULL, 2);
    ssize_t end;
    char *t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_END);
    cr_assert_not_null(strstr(t, "id: 2\nevent: deleted\ndata: {\"run_id\":\"r\",\"seq\":2}\n\n"), "%s", t);
    cr_assert_null(strstr(t, "id: 1\n"), "a deleted node's state was sent: %s", t);
    watch_close(w);
    watch_hub_free(h);
}

/*
 * fake_fetch's view of the run: node -> its current seq (0: gone; -1: a
 * read error); filed: the change that made it is filed with the hub first,
 * as the engine does under its lock (else it came from elsewhere: another
 * instance, or the database's refusal).
 */
static struct {
    const char *node;
    int64_t seq;
    bool filed;
} current[5];
static watch_hub *fetch_hub;

static int fake_fetch(void *ctx, const char *run_id, const char *node_id, ns_row **out)
{
    (void)ctx;
    *out = NULL;
    for (size_t i = 0; i < sizeof current / sizeof *current; i++) {
        if (!current[i].node || strcmp(current[i].node, node_id) != 0)
            continue;
        if (current[i].seq < 0)
            return -1;
        if (current[i].filed)
            change(fetch_hub, run_id, node_id, current[i].seq);
        if (current[i].seq > 0)
            *out = row(run_id, node_id, current[i].seq);
        return 0;
    }
    return 0;
}

/*
 * With a fetch, a catch-up entry is read when its turn comes: sent when
 * the node is still at the seq listed; left out when it moved on by a
 * change filed with the hub (that one goes out in seq order) or is gone;
 * sent as read when it moved on otherwise (another instance's commit,
 * which no hook files: nothing else would send it). A read error drops
 * the stream.
 */
Test(watch, catch_up_rows_are_read_when_their_turn_comes)
{
    memset(&stats, 0, sizeof stats);
    watch_config cfg = { .max_watchers = 4, .buffer_bytes = 1 << 20, .resume = fake_resume,
                         .encode = fake_encode, .fetch = fake_fetch, .stats = &stats };
    watch_hub *h = fetch_hub = watch_hub_new(&cfg);
    cr_assert_not_null(h);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    cr_assert_not_null(w);
    /*
     * Listed: a at 1, b at 2, c at 3, e at 6. Now: a still 1; b at 7 by a
     * change filed as it is read; c gone; e at 8 from elsewhere.
     */
    ns_row *listed[] = { row("r", "a", 1), row("r", "b", 2), row("r", "c", 3),
                         row("r", "e", 6) };
    current[0].node = "a", current[0].seq = 1;
    current[1].node = "b", current[1].seq = 7, current[1].filed = true;
    current[2].node = "c", current[2].seq = 0;
    current[3].node = "e", current[3].seq = 8;
    cr_assert_eq(watch_catch_up(w, listed, 4), 0);
    for (size_t i = 0; i < 4; i++)
        model_row_unref(listed[i]);
    ssize_t end;
    char got[64];
    char *t = drain(w, &end);
    ids(t, got, sizeof got);
    cr_assert_str_eq(got, "1,8,7", "sent: %s", got);
    cr_assert_not_null(strstr(t, "\"node\":\"e\",\"seq\":8"), "%s", t);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    watch_close(w);

    /* A read that fails ends the stream: its client resumes from what it has. */
    w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    ns_row *one[] = { row("r", "f", 9) };
    current[4].node = "f", current[4].seq = -1;
    cr_assert_eq(watch_catch_up(w, one, 1), 0);
    model_row_unref(one[0]);
    drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_DROP);
    watch_close(w);
    watch_hub_free(h);
}

static bool resumed_at_least(int n)
{
    for (int i = 0; i < 3000; i++) {
        if (atomic_load(&resumed) >= n)
            return true;
        nanosleep(&(struct timespec){ 0, 10000000 }, NULL);
    }
    return false;
}

/*
 * A client may ask from a seq above any of the run's (a stale or guessed
 * one): its changes below that are not news, but the run's delete is.
 */
Test(watch, a_delete_reaches_watchers_asking_from_past_it)
{
    watch_hub *h = hub(4, 1 << 20);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 100, false, NULL, 0, &err);
    watcher *p = watch_open(h, WATCH_POLL, "r", 100, false, NULL, INT64_MAX, &err);
    cr_assert(w && p);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    ssize_t end;
    drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    cr_assert_not(watch_park(p, -1));
    change(h, "r", "a", 5);
    cr_assert_eq(atomic_load(&resumed), 0, "a change below since woke the poll");
    watch_on_change(h, "r", NULL, 6);
    char *t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_END, "the stream outlived its run: %s", t);
    cr_assert_not_null(strstr(t, "event: deleted\n"), "%s", t);
    cr_assert_null(strstr(t, "event: node\n"), "a change below since was sent: %s", t);
    watch_close(w);
    cr_assert(resumed_at_least(1), "the run's delete did not wake the poll");
    cr_assert_not(watch_timed_out(p), "the poll waited out its time");
    watch_close(p);
    watch_hub_free(h);
}

/*
 * A parked watcher whose peer closed its socket is dropped (a stream) or
 * fired (a poll) and resumed, with no change, heartbeat or deadline to do
 * it; one whose peer is still there stays parked.
 */
Test(watch, a_parked_watcher_whose_peer_left_is_resumed)
{
    watch_hub *h = hub(8, 1 << 20);
    int err = 0, gone[2], stays[2], poll_gone[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, gone), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, stays), 0);
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, poll_gone), 0);
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    watcher *live = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    watcher *p = watch_open(h, WATCH_POLL, "r", 0, false, NULL, INT64_MAX, &err);
    cr_assert(w && live && p);
    ssize_t end;
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    cr_assert_eq(watch_catch_up(live, NULL, 0), 0);
    drain(w, &end);
    drain(live, &end);
    cr_assert_not(watch_park(live, stays[0]));
    cr_assert_not(watch_park(w, gone[0]));
    cr_assert_not(watch_park(p, poll_gone[0]));
    close(gone[1]);
    close(poll_gone[1]);
    cr_assert(resumed_at_least(2), "a watcher whose peer left was not resumed");
    drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_DROP, "the stream of a peer that left goes on");
    cr_assert(watch_timed_out(p), "the poll of a peer that left did not fire");
    cr_assert_eq(atomic_load(&stats.watch_dropped), 0, "a client that left is not one too slow");
    watch_close(w);
    watch_close(p);
    /*
     * The peer still there: the look that found the others passed it over,
     * and so do the ones in the next 2.5 s (a window to see it wrongly
     * resumed in, not a wait for anything: nothing can make it pass late).
     */
    nanosleep(&(struct timespec){ 2, 500000000 }, NULL);
    cr_assert_eq(atomic_load(&resumed), 2, "a watcher with its peer there was resumed");
    watch_release(h);
    cr_assert(resumed_at_least(3));
    watch_close(live);
    watch_hub_free(h);
    close(gone[0]);
    close(stays[0]);
    close(stays[1]);
    close(poll_gone[0]);
}

Test(watch, parked_watchers_are_resumed_by_the_hub_thread)
{
    watch_hub *h = hub(8, 1 << 20);
    int err = 0;
    watcher *w = watch_open(h, WATCH_STREAM, "r", 0, false, NULL, 0, &err);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    ssize_t end;
    drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    cr_assert_not(watch_park(w, -1));
    change(h, "other", "a", 1);
    change(h, "r", "a", 2);
    cr_assert(resumed_at_least(1), "a change did not resume the parked stream");
    /* A long poll fires on a change of its run, or at its deadline. */
    watcher *p = watch_open(h, WATCH_POLL, "r", 2, false, NULL, INT64_MAX, &err);
    cr_assert_not(watch_park(p, -1));
    change(h, "r", "b", 3);
    cr_assert(resumed_at_least(2));
    cr_assert_not(watch_timed_out(p));
    watch_close(p);
    p = watch_open(h, WATCH_POLL, "r", 3, false, NULL, model_mono_ns(), &err);
    if (watch_park(p, -1))
        atomic_fetch_add(&resumed, 1);  /* fired before it could park: the caller resumes */
    cr_assert(resumed_at_least(3), "the poll's deadline did not resume it");
    cr_assert(watch_timed_out(p));
    watch_close(p);
    /* The end: everything parked is resumed, nothing parks again. */
    drain(w, &end);
    cr_assert_not(watch_park(w, -1));
    watch_release(h);
    cr_assert_geq(atomic_load(&resumed), 4);
    cr_assert(watch_park(w, -1));
    drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_END);
    watch_close(w);
    watch_hub_free(h);
}

Test(watch, a_delete_missed_before_the_stream_is_told_instead_of_the_catch_up)
{
    watch_hub *h = hub(8, 1 << 20);
    int err = 0;
    ssize_t end;
    /* Committed (read from the store): even a durable stream tells it at once. */
    watcher *w = watch_open(h, WATCH_STREAM, "r", 3, true, NULL, 0, &err);
    cr_assert_not_null(w);
    watch_deleted_before(w, 7, true);
    ns_row *fresh = row("r", "new", 9);
    cr_assert_eq(watch_catch_up(w, &fresh, 1), 0);
    char *t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_END);
    cr_assert_str_eq(t, "retry: 1000\n\nid: 7\nevent: deleted\ndata: {\"run_id\":\"r\",\"seq\":7}\n\n");
    watch_close(w);

    /* Queued: a durable stream waits for its commit. */
    w = watch_open(h, WATCH_STREAM, "r", 3, true, NULL, 0, &err);
    cr_assert_not_null(w);
    watch_deleted_before(w, 7, false);
    cr_assert_eq(watch_catch_up(w, &fresh, 1), 0);
    t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_IDLE);
    cr_assert_null(strstr(t, "deleted"), "told before its commit: %s", t);
    watch_on_durable(h, 7);
    t = drain(w, &end);
    cr_assert_eq(end, WATCH_FILL_END);
    cr_assert_not_null(strstr(t, "id: 7\nevent: deleted\n"), "%s", t);
    watch_close(w);

    /* A newer delete seen since watch_open wins over the one looked up. */
    w = watch_open(h, WATCH_STREAM, "r", 3, false, NULL, 0, &err);
    cr_assert_not_null(w);
    watch_on_change(h, "r", NULL, 8);
    watch_deleted_before(w, 7, true);
    cr_assert_eq(watch_catch_up(w, NULL, 0), 0);
    t = drain(w, &end);
    cr_assert_not_null(strstr(t, "id: 8\nevent: deleted\n"), "%s", t);
    watch_close(w);
    model_row_unref(fresh);
    watch_hub_free(h);
}
