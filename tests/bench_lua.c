/* bench_lua.c - cost of the Lua path per event: JSON to tables, meta, the
 * call, with a trivial handler.  Run by `make bench`:
 *   bench_lua SCRIPT PAYLOAD [EVENTS] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../core/batch.h"
#include "../core/spool.h"
#include "../core/util.h"
#include "../lua/runtime.h"

int
main(int argc, char **argv)
{
    struct lrt_conf conf = {.handler_timeout = 30,
                            .memory_limit = 256u << 20};
    struct gerr err;
    struct batch b;
    struct lrt *rt;
    FILE *f;
    char *body;
    long len, total;
    double t0, dt;

    if (argc < 3) {
        fprintf(stderr, "usage: bench_lua SCRIPT PAYLOAD [EVENTS]\n");
        return 2;
    }
    total = argc > 3 ? atol(argv[3]) : 1000000;
    conf.script = argv[1];
    f = fopen(argv[2], "rb");
    if (f == NULL || fseek(f, 0, SEEK_END) != 0 || (len = ftell(f)) < 0) {
        perror(argv[2]);
        return 1;
    }
    rewind(f);
    body = xmalloc((size_t)len);
    if (fread(body, 1, (size_t)len, f) != (size_t)len) {
        perror(argv[2]);
        return 1;
    }
    fclose(f);
    if (batch_parse(&b, body, (size_t)len, &err) != 0 || b.n == 0) {
        fprintf(stderr, "%s: %s\n", argv[2], err.msg);
        return 1;
    }
    rt = lrt_new(&conf, 0, &err);
    if (rt == NULL) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    t0 = util_mono();
    for (long i = 0; i < total; i++) {
        const struct batch_event *be = &b.ev[(size_t)i % b.n];
        struct spool_event ev = {
            .id = i + 1,
            .received_at = 1e9,
            .type = be->type,
            .contact = be->contact,
            .webhook_id = "0f0e0d0c-0000-4000-8000-000000000000",
            .remote_addr = "127.0.0.1",
            .batch_index = (int)((size_t)i % b.n),
            .batch_size = (int)b.n,
            .json = (char *)be->json,
            .len = be->len,
        };

        if (lrt_call(rt, &ev, &err) < 0) {
            fprintf(stderr, "event %ld: %s\n", i, err.msg);
            return 1;
        }
    }
    dt = util_mono() - t0;
    printf("lua path: %.2f us per event (%ld events of %zu kinds, "
           "%.0f bytes of JSON each on average)\n",
           dt * 1e6 / (double)total, total, b.n,
           (double)(b.compact ? strlen(b.compact) : 0) / (double)b.n);
    lrt_free(rt);
    batch_free(&b);
    return 0;
}
