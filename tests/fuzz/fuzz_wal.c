/*
 * fuzz_wal.c — the WAL source's reading of the replication stream
 * (daemon/relay_wal_msg.c) on hostile bytes: a CopyData frame, then the
 * pgoutput message inside it, then — for a 'ferry' message — emit's
 * content, each as the relay chains them (relay_wal.c, on_data).
 *
 * Promises checked besides the sanitizers: each call returns 0 or -1; a
 * refusal says why; an accepted content's strings are NUL-terminated and
 * within the limits emit enforces (topic 1..249 bytes, key 1..1024, type
 * 1..255, no NUL), its payload no longer than the content.
 */
#include "fuzz.h"
#include "../../daemon/relay_wal.h"

static const char TOKEN[] = "0123456789abcdef0123456789abcdef";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char why[256] = "";
    wal_frame f;
    int rc = wal_frame_parse((const char *)data, size, &f, why, sizeof why);
    FUZZ_CHECK(rc == 0 || rc == -1, "frame: %d", rc);
    FUZZ_CHECK(rc == 0 || why[0] != '\0', "frame refused without a reason");
    if (rc != 0 || f.kind != 'w')
        return 0;
    FUZZ_CHECK(f.data + f.len == (const char *)data + size, "frame data past the input");
    wal_pgout p;
    why[0] = '\0';
    rc = wal_pgout_parse(f.data, f.len, &p, why, sizeof why);
    FUZZ_CHECK(rc == 0 || rc == -1, "pgoutput: %d", rc);
    FUZZ_CHECK(rc == 0 || why[0] != '\0', "pgoutput refused without a reason");
    if (rc != 0 || p.tag != 'M')
        return 0;
    FUZZ_CHECK(p.content + p.content_len == f.data + f.len, "content past the message");
    wal_scratch s = {0};
    wal_msg m;
    why[0] = '\0';
    rc = wal_msg_parse(p.content, p.content_len, TOKEN, 1048576, &s, &m, why, sizeof why);
    FUZZ_CHECK(rc == 0 || rc == -1, "content: %d", rc);
    FUZZ_CHECK(rc == 0 || why[0] != '\0', "content refused without a reason");
    if (rc == 0) {
        size_t t = strlen(m.topic), k = strlen(m.key), y = strlen(m.type);
        FUZZ_CHECK(t >= 1 && t <= 249, "topic of %zu bytes", t);
        FUZZ_CHECK(k >= 1 && k <= 1024, "key of %zu bytes", k);
        FUZZ_CHECK(y >= 1 && y <= 255, "type of %zu bytes", y);
        FUZZ_CHECK(strlen(m.payload) == m.payload_len, "payload with a NUL");
        FUZZ_CHECK(m.payload_len <= p.content_len, "payload longer than the content");
        FUZZ_CHECK(m.seq >= 1, "seq %lld", (long long)m.seq);
    }
    wal_scratch_free(&s);
    return 0;
}
